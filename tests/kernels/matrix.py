"""The kernel matrix: the capture's own load path on Debian's kernels under QEMU, and on the host.

    python -m tests.kernels.matrix prepare [SERIES...]   # fetch kernels, build initramfs (cached)
    python -m tests.kernels.matrix run [SERIES...]       # boot each, print its result as JSON

Each series is the newest kernel a Debian suite serves (its `linux-image-amd64` metapackage), fetched
with `apt-get download` under a private apt configuration (the host's sources are not touched) into
$OKE_CACHE/kernels. The generic flavour, not -cloud: the cloud kernels have no 9p. A guest boots
that kernel with a tiny initramfs (static busybox, the kernel's own virtio/9p modules, `init` beside
this file), mounts the host's root read-only over virtio-9p and runs `guest.py` with the repo's venv:
the same interpreter, libbpf, object and loader as the host, on another kernel. QEMU is TCG only
(no KVM here), so a boot costs seconds; one boot covers every mode.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest.py"
INIT = HERE / "init"
PYTHON = ROOT / ".venv" / "bin" / "python"
CACHE = Path(os.environ.get("OKE_CACHE") or Path.home() / ".cache" / "otel-kafka-ebpf") / "kernels"

MARKER = "OKE-KERNEL-RESULT "  # the guest's one result line starts with it
MODES = ("digest", "full", "heads")  # heads: the fallback program, loaded on purpose
DEBIAN = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
INDEX_MAX_AGE_S = 24 * 3600  # the package index is refreshed at most this often
BUSYBOX = "/bin/busybox"  # Debian's busybox-static
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT_S = float(os.environ.get("OKE_KERNEL_TIMEOUT", 300))  # one whole guest run, TCG
GUEST_MEMORY = "1G"  # the full mode's 64 MiB ring buffer and the digest's 16 MiB, with room
# One vCPU: a kernel's own behaviour, not the timing of two emulated CPUs. OKE_KERNEL_CPUS=2 lets the two
# threads of loadgen's client (one writes, one reads) race on one socket, as on a real host.
GUEST_CPUS = int(os.environ.get("OKE_KERNEL_CPUS", 1))


@dataclass(frozen=True)
class Series:
    name: str     # the test id
    suite: str    # the Debian suite whose newest kernel it is
    prefix: str   # the kernel release must start with it ("" for sid: whatever is newest)


SERIES = {s.name: s for s in (
    Series("6.1", "bookworm", "6.1."),
    Series("6.12", "trixie", "6.12."),
    Series("sid", "sid", ""),
)}
HOST = "host"
MATRIX = (*SERIES, HOST)
FLAVOUR = "amd64"

# Loaded in this order when they are modules (modules.dep adds what they need first); built in: skipped.
GUEST_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


class KernelError(Exception):
    """A kernel could not be fetched, prepared or booted; the message says which and why."""


@dataclass(frozen=True)
class Kernel:
    series: str
    suite: str
    package: str   # linux-image-<release>
    version: str   # the Debian package version (6.1.176-1)
    release: str   # uname -r of the guest (6.1.0-50-amd64)
    dir: str

    @property
    def vmlinuz(self) -> Path:
        return Path(self.dir) / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return Path(self.dir) / "initramfs.cpio.gz"


# -- the package index ---------------------------------------------------------------------------
def _apt_dir() -> Path:
    return CACHE / "apt"


def _apt_options() -> list[str]:
    base = _apt_dir()
    return ["-o", f"Dir::Etc::SourceList={base}/sources.list", "-o", f"Dir::Etc::SourceParts={base}/sources.list.d",
            "-o", f"Dir::Etc::PreferencesParts={base}/preferences.d", "-o", f"Dir::Etc::Preferences={base}/preferences",
            "-o", f"Dir::State::Lists={base}/lists", "-o", f"Dir::Cache={base}/cache",
            "-o", f"Dir::State::status={base}/status", "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1", "-q"]


def _apt(tool: str, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([tool, *_apt_options(), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"{tool} {' '.join(args)}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc.stdout


def refresh_index(force: bool = False) -> None:
    """The private apt configuration's index of the suites, refreshed when older than a day."""
    base = _apt_dir()
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "status").touch()
    suites = sorted({s.suite for s in SERIES.values()})
    sources = "".join(f"deb [signed-by={KEYRING}] {DEBIAN} {suite} main\n" for suite in suites)
    stamp = base / "updated"
    if (base / "sources.list").exists() and (base / "sources.list").read_text() == sources and stamp.exists() \
            and not force and time.time() - stamp.stat().st_mtime < INDEX_MAX_AGE_S:
        return
    (base / "sources.list").write_text(sources)
    try:
        _apt("apt-get", "update")
    except KernelError:
        if not stamp.exists():
            raise
        print(f"warning: the Debian package index could not be refreshed; using the one of "
              f"{time.ctime(stamp.stat().st_mtime)}", file=sys.stderr)
        return
    stamp.touch()


def _stanza(package: str, suite: str) -> dict[str, str]:
    """The fields of a package as the suite serves it."""
    try:
        text = _apt("apt-cache", "show", f"{package}/{suite}")
    except KernelError as exc:
        raise KernelError(f"Debian {suite} serves no {package}: {exc}") from None
    fields: dict[str, str] = {}
    key = None
    for line in text.split("\n\n", 1)[0].splitlines():
        if line[:1].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _depends(fields: dict[str, str]) -> list[tuple[str, str]]:
    """(package, exact version or '') of each Depends entry, first alternatives only."""
    out = []
    for entry in fields.get("Depends", "").split(","):
        first = entry.split("|")[0].strip()
        m = re.match(r"([^\s(]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", first)
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def select(series: Series) -> tuple[str, str, str, list[str]]:
    """(image package, its version, kernel release, packages to download as name=version) of the
    newest kernel of the series: the one the suite's metapackage depends on today."""
    meta = f"linux-image-{FLAVOUR}"
    image = next((p for p, _ in _depends(_stanza(meta, series.suite)) if p.startswith("linux-image-")), None)
    if image is None:
        raise KernelError(f"Debian {series.suite}'s {meta} depends on no linux-image package")
    release = image[len("linux-image-"):]
    if not release.startswith(series.prefix):
        raise KernelError(f"Debian {series.suite}'s newest kernel is {release}, not a {series.name} kernel")
    fields = _stanza(image, series.suite)
    version = fields["Version"]
    # newer packaging splits the image: linux-image-R depends on linux-binary-R, linux-modules-R, linux-base-R
    parts = [f"{p}={v or version}" for p, v in _depends(fields) if release in p and p.startswith("linux-")]
    return image, version, release, [f"{image}={version}", *parts]


# -- fetching and extracting ---------------------------------------------------------------------
def _kernel_dir(release: str) -> Path:
    return CACHE / release


def _selection_file(series: Series) -> Path:
    return CACHE / f"{series.name}.json"


def _initramfs_key(release: str, modules: list[str]) -> str:
    h = hashlib.sha256()
    h.update(INIT.read_bytes())
    h.update(Path(BUSYBOX).read_bytes() if Path(BUSYBOX).exists() else b"")
    h.update(release.encode())
    h.update("\n".join(modules).encode())
    return h.hexdigest()[:16]


def _index_stamp() -> float:
    stamp = _apt_dir() / "updated"
    return stamp.stat().st_mtime if stamp.exists() else 0.0


def prepare(name: str) -> Kernel:
    """The series' kernel fetched, extracted and with its initramfs built; cached, so fast when done
    (the choice of kernel is made again only when the package index was refreshed)."""
    if name not in SERIES:
        raise KernelError(f"unknown kernel series {name!r}: expected one of {', '.join(SERIES)}")
    series = SERIES[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    refresh_index()
    index = _index_stamp()
    chosen = json.loads(_selection_file(series).read_text()) if _selection_file(series).exists() else {}
    if chosen.get("index") == index and chosen.get("suite") == series.suite:
        image, version, release, packages = chosen["package"], chosen["version"], chosen["release"], chosen["debs"]
    else:
        image, version, release, packages = select(series)
    kdir = _kernel_dir(release)
    meta_file = kdir / "kernel.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if meta.get("version") != version or meta.get("wanted") != list(GUEST_MODULES) or not (kdir / "vmlinuz").exists():
        _fetch_and_extract(kdir, release, packages)
        meta = {"series": name, "suite": series.suite, "package": image, "version": version, "release": release,
                "debs": packages, "wanted": list(GUEST_MODULES),
                "modules": sorted(p.name for p in (kdir / "modules").glob("*.ko"))}
        meta_file.write_text(json.dumps(meta, indent=1))
    key = _initramfs_key(release, meta["modules"])
    if meta.get("initramfs") != key or not (kdir / "initramfs.cpio.gz").exists():
        build_initramfs(kdir)
        meta["initramfs"] = key
        meta_file.write_text(json.dumps(meta, indent=1))
    _selection_file(series).write_text(json.dumps({**meta, "index": index}, indent=1))
    _forget_old_debs()
    return Kernel(name, series.suite, image, version, release, str(kdir))


def _debs_dir() -> Path:
    return CACHE / "debs"


def _deb_name(spec: str) -> str:
    name, _, version = spec.partition("=")
    return f"{name}_{version.replace(':', '%3a')}_amd64.deb"


def _forget_old_debs() -> None:
    """Keep the packages of the kernels selected now; a newer ABI replaces an older one."""
    keep = set()
    for series in SERIES.values():
        if _selection_file(series).exists():
            keep.update(_deb_name(p) for p in json.loads(_selection_file(series).read_text())["debs"])
    for deb in _debs_dir().glob("*.deb"):
        if deb.name not in keep:
            deb.unlink()


def _fetch_and_extract(kdir: Path, release: str, packages: list[str]) -> None:
    debs = _debs_dir()
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (debs / _deb_name(p)).exists()]
    if missing:
        print(f"downloading {', '.join(missing)}", file=sys.stderr)
        _apt("apt-get", "download", *missing, cwd=debs)
    for p in packages:
        if not (debs / _deb_name(p)).exists():
            raise KernelError(f"apt-get download left no {_deb_name(p)} in {debs}")
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".extract-") as tmp:
        tree = Path(tmp)
        for p in packages:
            subprocess.run(["dpkg-deb", "-x", str(debs / _deb_name(p)), str(tree)], check=True)
        moddir = next((d for d in (tree / "lib/modules" / release, tree / "usr/lib/modules" / release) if d.is_dir()),
                      None)
        vmlinuz = next((f for f in (tree / "boot" / f"vmlinuz-{release}", *(() if moddir is None else
                                                                              (moddir / "vmlinuz",))) if f.exists()),
                       None)
        if moddir is None or vmlinuz is None:
            raise KernelError(f"{', '.join(packages)}: no vmlinuz or /lib/modules/{release} inside")
        config = next((f for f in (tree / "boot" / f"config-{release}", moddir / "config") if f.exists()), None)
        staging = kdir.with_name(kdir.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "modules").mkdir(parents=True)
        shutil.copyfile(vmlinuz, staging / "vmlinuz")
        if config is not None:
            shutil.copyfile(config, staging / "config")
        for i, path in enumerate(_module_closure(moddir, GUEST_MODULES)):
            name = _module_name(path.name)
            (staging / "modules" / f"{i:02d}-{name}.ko").write_bytes(_decompressed(path))
        shutil.rmtree(kdir, ignore_errors=True)
        staging.rename(kdir)


def _module_name(path: str) -> str:
    return re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")


_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The modules to insmod, dependencies first, for `wanted` (those built in are left out). The
    packages ship no modules.dep (depmod writes it at install): each module's own `depends=`
    (modinfo, written by modpost) says what it needs."""
    paths = {_module_name(p.name): p for p in (moddir / "kernel").rglob("*.ko*")}
    builtin = {_module_name(line) for line in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name in builtin:
            return
        if name not in paths:
            raise KernelError(f"kernel {moddir.name} has no module {name} (and does not build it in)")
        m = _DEPENDS.search(_decompressed(paths[name]))
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else ()):
            visit(dep.replace("-", "_"))
        order.append(name)

    for name in wanted:
        visit(name)
    return [paths[name] for name in order]


def _decompressed(path: Path) -> bytes:
    """busybox insmod takes plain ELF modules."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


# -- the initramfs -------------------------------------------------------------------------------
def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    """One entry of a newc cpio archive."""
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build_initramfs(kdir: Path) -> None:
    """busybox, init, the kernel's modules, /dev/console: all PID 1 needs to reach the 9p root."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "proc", "sys", "root", "modules"):
        entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    if not Path(BUSYBOX).exists():
        raise KernelError(f"{BUSYBOX} is missing: install Debian's busybox-static (make kernels)")
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes(), (0, 0)))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.read_bytes(), (0, 0)))
    for ko in sorted((kdir / "modules").glob("*.ko")):
        entries.append((f"modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes(), (0, 0)))
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        out += _cpio_entry(name, mode, data, rdev, ino)
    out += _cpio_entry("TRAILER!!!", 0)
    tmp = kdir / "initramfs.cpio.gz.tmp"
    tmp.write_bytes(gzip.compress(bytes(out), compresslevel=6))
    tmp.rename(kdir / "initramfs.cpio.gz")


# -- running -------------------------------------------------------------------------------------
def parse_result(text: str) -> dict | None:
    for line in text.splitlines():
        line = line.strip("\r\x00 ")
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    return None


def boot(kernel: Kernel, modes: tuple[str, ...] = MODES, timeout_s: float = BOOT_TIMEOUT_S,
         script: Path = GUEST, console_log: Path | None = None, append: str = "") -> dict:
    """Boot the kernel under QEMU (TCG), run guest.py for `modes`, return its result (plus the host's
    view: wall seconds of the whole run). Raises KernelError when the guest gives no result.
    `script` replaces guest.py (to look into a kernel by hand); `console_log` keeps the console; `append`
    adds kernel parameters (preempt=full, ...)."""
    if shutil.which(QEMU) is None:
        raise KernelError(f"{QEMU} is missing: run `make kernels` (Debian's qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="oke-kernel-") as tmp:
        console, result = Path(tmp) / "console.log", Path(tmp) / "result.log"
        cmdline = " ".join((
            "console=ttyS0", "panic=-1", "loglevel=4", "quiet", "8250.nr_uarts=2",
            f"oke_root={ROOT}", f"oke_python={PYTHON}", f"oke_modes={','.join(modes)}", f"oke_script={script}", append,
        )).strip()
        cmd = [QEMU, "-accel", "tcg", "-cpu", "max", "-smp", str(GUEST_CPUS), "-m", GUEST_MEMORY,
               "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
               "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initramfs), "-append", cmdline,
               "-serial", f"file:{console}", "-serial", f"file:{result}",
               "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
               "-device", "virtio-9p-pci,fsdev=root,mount_tag=root"]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
            qemu_err = proc.stderr.strip()
        except subprocess.TimeoutExpired:
            qemu_err = f"timed out after {timeout_s:.0f} s"
        wall = time.monotonic() - started
        log = console.read_text(errors="replace") if console.exists() else ""
        if console_log is not None:
            Path(console_log).write_text(log)
        out = parse_result(result.read_text(errors="replace")) if result.exists() else None
    if out is None:
        tail = "\n".join(log.splitlines()[-25:])
        raise KernelError(f"kernel {kernel.release} ({kernel.series}) gave no result ({qemu_err or 'qemu exited'});"
                          f" the console's last lines:\n{tail}")
    out.update(series=kernel.series, suite=kernel.suite, package=kernel.package, package_version=kernel.version,
               wall_seconds=wall, accel="tcg")
    return out


def run_host(modes: tuple[str, ...] = MODES, timeout_s: float = BOOT_TIMEOUT_S) -> dict:
    """guest.py on the host's own kernel, natively (no QEMU)."""
    started = time.monotonic()
    proc = subprocess.run([str(PYTHON), str(GUEST), "--modes", ",".join(modes)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    out = parse_result(proc.stdout)
    if out is None:
        raise KernelError(f"guest.py on the host gave no result (exit {proc.returncode}): {proc.stderr[-2000:]}")
    out.update(series=HOST, suite="", package="", package_version="", wall_seconds=time.monotonic() - started,
               accel="native")
    return out


def run(name: str, modes: tuple[str, ...] = MODES) -> dict:
    """One entry of the matrix: a series booted under QEMU, or the host."""
    if name == HOST:
        return run_host(modes)
    return boot(prepare(name), modes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.kernels.matrix")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch the kernels and build their initramfs (cached)")
    p.add_argument("series", nargs="*", default=list(SERIES))
    p.add_argument("--refresh", action="store_true", help="refresh the package index now")
    r = sub.add_parser("run", help="boot each kernel and print its result")
    r.add_argument("series", nargs="*", default=list(MATRIX))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            if args.refresh:
                refresh_index(force=True)
            for name in args.series:
                k = prepare(name)
                print(f"kernel {name}: {k.package} {k.version} ({k.dir})")
            return 0
        for name in args.series:
            print(json.dumps(run(name)), flush=True)
        return 0
    except KernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
