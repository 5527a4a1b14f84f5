"""`otel-kafka-ebpf doctor`: can this host run the agent? One line per check, with the fix."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from dataclasses import dataclass
from typing import Callable, TextIO

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 19, 21, 38, 39
CAPTURE_CAPS = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON}  # load and attach tracing programs (Linux 5.8+)

# bpf(2) commands and map types used by the probes below (uapi/linux/bpf.h).
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
SYS_bpf = {"x86_64": 321, "aarch64": 280}.get(platform.machine())


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _effective_caps() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _has(caps: int, cap: int) -> bool:
    return bool(caps >> cap & 1)


def check_privileges() -> Check:
    caps = _effective_caps()
    if _has(caps, CAP_SYS_ADMIN):
        return Check("privileges", True, "root" if os.geteuid() == 0 else "CAP_SYS_ADMIN present")
    missing = [name for name, cap in CAPTURE_CAPS.items() if not _has(caps, cap)]
    if not missing:
        return Check("privileges", True, "CAP_BPF and CAP_PERFMON present")
    present = [name for name in CAPTURE_CAPS if name not in missing]
    return Check("privileges", False,
                 f"missing {' and '.join(missing)}" + (f" ({present[0]} is present)" if present else "")
                 + ": both are needed to load the capture",
                 "run as root, or grant both: `setcap cap_bpf,cap_perfmon+ep` on the Python interpreter, or in "
                 "Kubernetes securityContext.capabilities.add: [BPF, PERFMON]")


def check_process_details() -> Check:
    """Optional: what `run` reads of other processes beyond the capture (it works without, with less)."""
    caps = _effective_caps()
    lacking = []
    if not _has(caps, CAP_SYS_PTRACE):
        lacking.append("CAP_SYS_PTRACE: other users' process environments (OTEL_SERVICE_NAME, "
                       "OTEL_RESOURCE_ATTRIBUTES) are unreadable, their services are named after their programs")
    if not _has(caps, CAP_SYS_ADMIN):
        lacking.append("CAP_SYS_ADMIN: no Metadata lookups from other network namespaces (names wait for the "
                       "clients' own Metadata)")
    if not lacking:
        return Check("process details", True, "process environments and network namespaces readable",
                     required=False)
    return Check("process details", False, "without " + "; without ".join(lacking), required=False)


def _permission(err: int) -> bool:
    return err in (errno.EPERM, errno.EACCES)


_PERMISSION_FIX = ("a permission problem, not the kernel: see the privileges line (in a container, a seccomp profile "
                   "may also refuse bpf())")


def check_btf() -> Check:
    path = "/sys/kernel/btf/vmlinux"
    if os.path.exists(path):
        return Check("kernel BTF", True, f"{path} present ({os.path.getsize(path) // 1024} KiB)")
    return Check("kernel BTF", False, f"{path} missing: CO-RE programs cannot be relocated",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)")


def _bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> tuple[int, int]:
    """Create a map with the raw bpf(2) syscall; returns (fd, errno)."""
    if SYS_bpf is None:
        return -1, errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()  # union bpf_attr, zeroed: map_type, key_size, value_size, max_entries
    attr[0], attr[1], attr[2], attr[3] = map_type, key_size, value_size, max_entries
    fd = libc.syscall(SYS_bpf, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd, ctypes.get_errno()


def check_bpf_syscall() -> Check:
    fd, err = _bpf_map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    if fd >= 0:
        os.close(fd)
        return Check("bpf syscall", True, "bpf(BPF_MAP_CREATE) works")
    why = os.strerror(err)
    fix = _PERMISSION_FIX if _permission(err) else "enable CONFIG_BPF_SYSCALL in the kernel"
    return Check("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {why}", fix)


def check_ringbuf() -> Check:
    fd, err = _bpf_map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16)
    if fd >= 0:
        os.close(fd)
        return Check("ring buffer maps", True, "BPF_MAP_TYPE_RINGBUF available")
    if _permission(err):
        fix = _PERMISSION_FIX
    elif err == errno.EINVAL:  # the map type is unknown to this kernel
        fix = "the agent needs Linux 5.8 or later"
    else:
        fix = ""
    return Check("ring buffer maps", False, f"cannot create a BPF ring buffer: {os.strerror(err)}", fix)


def find_tracefs() -> str | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def check_kernel_version() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel version", False, f"cannot parse {release!r}", required=False)
    if (major, minor) >= (5, 17):
        return Check("kernel version", True, f"{release} (raw syscall tracepoints with BTF, ring buffers, bpf_loop)")
    return Check("kernel version", False, f"{release} is older than 5.17: bpf_loop, which the capture uses, is missing",
                 "use Linux 5.17 or later")


def check_syscall_tracepoints() -> Check:
    """The capture attaches to the raw syscall tracepoints through BTF; tracefs only helps to look."""
    path = find_tracefs()
    if not path:
        return Check("syscall tracepoints", True, "attached through BTF (tracefs not mounted, not needed)",
                     required=False)
    missing = [name for name in ("raw_syscalls/sys_enter", "raw_syscalls/sys_exit", "sched/sched_process_exit")
               if not os.path.isdir(os.path.join(path, "events", name))]
    if not missing:
        return Check("syscall tracepoints", True, "raw_syscalls/sys_enter, sys_exit and sched_process_exit present")
    return Check("syscall tracepoints", False, f"missing: {', '.join(missing)}",
                 "use a kernel with CONFIG_FTRACE_SYSCALLS=y")


def check_uprobes() -> Check:
    if os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return Check("uprobes", True, "uprobe PMU present (TLS libraries' plaintext)", required=False)
    return Check("uprobes", False, "no uprobe PMU: TLS capture will be unavailable",
                 "enable CONFIG_UPROBE_EVENTS", required=False)


def check_libbpf() -> Check:
    from .capture.libbpf import find_libbpf  # local import: doctor must run even if this fails

    try:
        path, version = find_libbpf()
    except OSError as exc:
        return Check("libbpf", False, str(exc), "apt-get install libbpf1 (Debian/Ubuntu) or dnf install libbpf")
    return Check("libbpf", True, f"{path} version {version}")


def check_bpf_objects() -> Check:
    from .capture.loader import object_path

    path = object_path("capture")
    if os.path.exists(path):
        return Check("BPF objects", True, f"{path}")
    return Check("BPF objects", False, f"{path} missing", "run `make bpf` in the source tree")


def check_bpf_load(settings=None, tls_lines: list[Check] | None = None) -> Check:
    """Load and attach the real object with the settings in force, as `run` does, and detach. With `tls_lines`,
    one line per running Kafka client process goes there: whether its TLS is seen, and how or why not."""
    from .capture.live import degraded_line
    from .capture.loader import CaptureError, CaptureProgram, CaptureSettings

    settings = settings or CaptureSettings()
    try:
        prog = CaptureProgram(settings, lambda event: None).open()
    except CaptureError as exc:
        return Check("BPF load", False, str(exc),
                     "run `otel-kafka-ebpf doctor` as root; if the kernel refuses a program, report the line above "
                     "with `uname -r` (the README lists the kernels tested)")
    try:
        stats = ", ".join(f"{name} {s.insns:,} instructions verified in {s.usec / 1000:.0f} ms"
                          for name, s in sorted(prog.verifier_stats.items()))
        if tls_lines is not None and prog.tls is not None:
            from .capture.tls import client_report

            for pid, cmd, seen, how in client_report(prog.tls):
                tls_lines.append(Check(f"TLS of pid {pid} ({cmd})", seen, how, required=False))
        if prog.degraded:
            return Check("BPF load", False, degraded_line(prog.refusal),
                         "a kernel listed in the README, or report `uname -r` and the line above", required=False)
        return Check("BPF load", True, f"{settings.mode} mode loads and attaches ({stats}; "
                     f"{prog.load_seconds:.2f} s in all)")
    finally:
        prog.close()


CHECKS: tuple[Callable[[], Check], ...] = (
    check_privileges, check_btf, check_kernel_version, check_bpf_syscall, check_ringbuf,
    check_syscall_tracepoints, check_uprobes, check_libbpf, check_bpf_objects, check_process_details,
)


def run_checks(settings=None) -> list[Check]:
    results = []
    checks = list(CHECKS)
    if os.geteuid() == 0 or _has(_effective_caps(), CAP_BPF):
        tls_lines: list[Check] = []

        def check_bpf_load_in_force() -> Check:  # the real thing, once it can be tried
            return check_bpf_load(settings, tls_lines)

        checks.append(check_bpf_load_in_force)
    for check in checks:
        try:
            results.append(check())
        except Exception as exc:  # a check that breaks is a failed check, not a crash
            results.append(Check(check.__name__.removeprefix("check_"), False, f"check failed: {exc}"))
    if os.geteuid() == 0 or _has(_effective_caps(), CAP_BPF):
        results.extend(tls_lines)
    return results


def doctor(out: TextIO, settings=None) -> int:
    results = run_checks(settings)
    for r in results:
        mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
        line = f"{mark} {r.name}: {r.detail}"
        if not r.ok and r.fix:
            line += f" -> fix: {r.fix}"
        print(line, file=out)
    failed = [r for r in results if r.required and not r.ok]
    print(f"{'agent can run' if not failed else 'agent cannot run'}: {len(results) - len(failed)}/{len(results)} checks passed",
          file=out)
    return 1 if failed else 0
