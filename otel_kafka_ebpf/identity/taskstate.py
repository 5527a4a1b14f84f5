"""Whether a process can run, as the kernel tells it: stopped (SIGSTOP, a tracer), frozen (cgroup v2 freezer),
exited, or running. Read from /proc and cgroupfs; a consumer that cannot run does not consume, however its
traffic looked a moment ago."""

from __future__ import annotations

RUNNING, STOPPED, FROZEN, EXITED = "running", "stopped", "frozen", "exited"


def task_state(pid: int, *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> str:
    """One of RUNNING, STOPPED, FROZEN, EXITED for process `pid` (its thread group leader)."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as fh:
            stat = fh.read(512)
    except OSError:
        return EXITED
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]  # the field after "(comm)", which may hold spaces
    if state in (b"T", b"t"):
        return STOPPED
    if state in (b"Z", b"X", b""):
        return EXITED
    try:
        with open(f"{proc_root}/{pid}/cgroup", "rb") as fh:
            path = next((line[3:].strip() for line in fh.read(4096).splitlines() if line.startswith(b"0::")), None)
        if path is not None:
            with open(f"{cgroup_root}{path.decode(errors='replace')}/cgroup.events", "rb") as fh:
                if b"frozen 1" in fh.read(256):
                    return FROZEN
    except OSError:
        pass
    return RUNNING
