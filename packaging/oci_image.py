"""The agent's container image, made without any container registry: `make image` runs this.

1. mmdebstrap makes a minimal Debian root file system from Debian's archive (the `essential` set, python3,
   python3-venv, libbpf1), installs the wheel of `make wheel` into a venv at /opt/otel-kafka-ebpf from the
   wheelhouse (offline), removes pip and what only the build needed, and writes the root as one tar.
2. That tar, gzip-compressed, is the image's one layer; the image config (entrypoint `otel-kafka-ebpf`, command
   `run`, as collector-config/k8s/daemonset.yaml passes `args: ["run"]`), the manifest and index.json are written
   beside it as an OCI image layout, packed into one tar that also holds a Docker `manifest.json`: the same file
   loads with `podman load -i`, `docker load -i`, `ctr images import` and `skopeo copy oci-archive:...`.

Timestamps come from SOURCE_DATE_EPOCH when it is set, so the archive's own entries do not depend on the clock.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VENV = "/opt/otel-kafka-ebpf"
SUITE = "bookworm"
# Debian's archive, with the suite's updates and security fixes; nothing else is reached
SOURCES = (
    "deb http://deb.debian.org/debian {suite} main",
    "deb http://deb.debian.org/debian {suite}-updates main",
    "deb http://deb.debian.org/debian-security {suite}-security main",
)
# libstdc++6: grpcio's extension links it (manylinux wheels take it from the system);
# usr-is-merged: what lets usrmerge go (below): the root is merged-/usr already
PACKAGES = ("python3", "python3-venv", "libbpf1", "libstdc++6", "usr-is-merged")
# Removed once the venv is made: ensurepip's wheels (ca-certificates and openssl come with them), and usrmerge with
# the perl it needs (47 MB), which apt picks for init-system-helpers (usrmerge | usr-is-merged) in the essential set.
REMOVED = ("python3-venv", "python3.11-venv", "python3-pip-whl", "python3-setuptools-whl", "ca-certificates", "openssl",
           "usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl", "perl", "libperl5.36",
           "perl-modules-5.36")
# Documentation, manual pages and translations are not needed in the image; the copyright files stay.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/lintian/*",
)
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


def build_rootfs(wheel: Path, wheelhouse: Path, out: Path, work: Path, suite: str) -> None:
    """The root file system as a tar, by mmdebstrap (as root: its hooks chroot into the new root)."""
    stage = work / "stage"
    (stage / "wheelhouse").mkdir(parents=True)
    for whl in wheelhouse.glob("*.whl"):
        shutil.copy(whl, stage / "wheelhouse")
    shutil.copy(wheel, stage)
    # the hooks' commands run in the new root with a clean environment: none of this machine's settings (PIP_*)
    in_root = ('chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 '
               'DEBIAN_FRONTEND=noninteractive ')
    pip = f"{VENV}/bin/python -m pip --no-cache-dir --disable-pip-version-check"
    hooks = [
        'mkdir -p "$1/tmp/oke"',
        f"sync-in {shlex.quote(str(stage))} /tmp/oke",
        in_root + f"python3 -m venv {VENV}",
        in_root + f"{pip} install -q --no-index --find-links /tmp/oke/wheelhouse /tmp/oke/{shlex.quote(wheel.name)}",
        in_root + f"{pip} uninstall -q -y pip setuptools",
        in_root + f"dpkg --purge {' '.join(REMOVED)} >/dev/null",
        # bytecode checked by the source's hash, not its mtime: the tar's mtimes are clamped to SOURCE_DATE_EPOCH,
        # which would make every timestamped .pyc stale (and the root is read-only: compiled again at each start)
        in_root + f"{VENV}/bin/python -m compileall -q -f --invalidation-mode checked-hash {VENV}/lib",
        # every shared object in the venv finds the libraries it links, the agent runs, its core is imported
        in_root + f"""sh -c '! find {VENV} -name "*.so*" -type f -exec ldd {{}} + | grep -B20 "not found"'""",
        in_root + f"{VENV}/bin/otel-kafka-ebpf --help >/dev/null",
        in_root + f"{VENV}/bin/python -c 'import otel_kafka_ebpf.fastpath as f; assert f._core, f.CORE_MISSING'",
        'rm -rf "$1/tmp/oke" "$1/root/.cache"',
    ]
    cmd = ["mmdebstrap", "--mode=root", "--variant=essential", "--format=tar", "--quiet",
           f"--include={','.join(PACKAGES)}", '--aptopt=APT::Install-Recommends "false"',
           *(f"--dpkgopt={opt}" for opt in DPKG_OPTIONS), *(f"--customize-hook={hook}" for hook in hooks),
           suite, str(out), *(line.format(suite=suite) for line in SOURCES)]
    subprocess.run(cmd, check=True)


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def _gzip_layer(rootfs: Path, layout: Path) -> tuple[dict, str]:
    """(the layer's descriptor, the sha256 of its uncompressed tar: the config's diff_id)."""
    tmp = layout / "blobs" / "layer.tmp"
    diff_id = hashlib.sha256()
    with open(rootfs, "rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            while chunk := src.read(CHUNK):
                diff_id.update(chunk)
                gz.write(chunk)
    digest = hashlib.sha256()
    with open(tmp, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    size = tmp.stat().st_size
    tmp.rename(layout / "blobs" / "sha256" / digest.hexdigest())
    return {"mediaType": MEDIA_LAYER, "digest": f"sha256:{digest.hexdigest()}", "size": size}, diff_id.hexdigest()


def write_layout(rootfs: Path, layout: Path, name: str, version: str, created: str, arch: str) -> None:
    """An OCI image layout (oci-layout, index.json, blobs/) of one layer, and Docker's manifest.json beside it."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layer, diff_id = _gzip_layer(rootfs, layout)
    repo, _, tag = name.rpartition(":")
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            # `docker/podman run IMAGE doctor` and the DaemonSet's `args: ["run"]` replace the command, not this
            "Entrypoint": [f"{VENV}/bin/otel-kafka-ebpf"],
            "Cmd": ["run"],
            "Env": [f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    # the DaemonSet's root file system is read-only; the wheel's bytecode was compiled at install
                    "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"],
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": {"org.opencontainers.image.title": repo, "org.opencontainers.image.version": version},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": f"make image: mmdebstrap {SUITE} ({', '.join(PACKAGES)}), "
                                                      f"the otel-kafka-ebpf wheel in {VENV}"}],
    }
    config_desc = {"mediaType": MEDIA_CONFIG, **_blob(layout, _json(config))}
    annotations = {"org.opencontainers.image.title": repo, "org.opencontainers.image.version": version,
                   "org.opencontainers.image.created": created}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc, "layers": [layer],
                "annotations": annotations}
    manifest_desc = {"mediaType": MEDIA_MANIFEST, **_blob(layout, _json(manifest)),
                     "platform": {"architecture": arch, "os": "linux"},
                     # the tag (as the OCI layout names a reference), and the full name containerd imports it as:
                     # the DaemonSet's `image: otel-kafka-ebpf:0.1.0` is docker.io/library/otel-kafka-ebpf:0.1.0
                     "annotations": {"org.opencontainers.image.ref.name": tag,
                                     "io.containerd.image.name": f"docker.io/library/{name}"}}
    (layout / "index.json").write_bytes(_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                                               "manifests": [manifest_desc]}))
    (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    (layout / "manifest.json").write_bytes(_json([{
        "Config": f"blobs/sha256/{config_desc['digest'].split(':')[1]}", "RepoTags": [name],
        "Layers": [f"blobs/sha256/{layer['digest'].split(':')[1]}"]}]))


def pack(layout: Path, out: Path, mtime: int) -> None:
    """The layout as one tar, entries in a fixed order, owned by root, all at one time."""
    def normal(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False, filter=normal)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, required=True, help="the wheel of `make wheel`")
    ap.add_argument("--wheelhouse", type=Path, required=True, help="a directory of the wheel's dependencies")
    ap.add_argument("--name", required=True, help="the image's name and tag, e.g. otel-kafka-ebpf:0.1.0")
    ap.add_argument("--out", type=Path, required=True, help="the OCI archive to write (.tar)")
    ap.add_argument("--suite", default=SUITE, help="the Debian suite (default %(default)s: its python3 is 3.11)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("oci_image.py: mmdebstrap's root mode needs root", file=sys.stderr)
        return 1
    arch = OCI_ARCH.get(platform.machine())
    if arch is None:
        print(f"oci_image.py: no image for {platform.machine()}", file=sys.stderr)
        return 1
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    version = args.name.rpartition(":")[2]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".image-", dir=args.out.parent) as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs.tar"
        build_rootfs(args.wheel.resolve(), args.wheelhouse.resolve(), rootfs, work, args.suite)
        write_layout(rootfs, work / "layout", args.name, version, created, arch)
        pack(work / "layout", args.out, epoch)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB ({args.name}, {arch}); "
          f"load with `podman load -i {args.out}` or `docker load -i {args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
