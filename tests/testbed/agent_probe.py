"""What a running agent process holds, read from the outside: RSS, CPU time, open fds, and the entries of its
BPF hash maps (through its fds' fdinfo and bpftool). The fault suite compares these before and after faults;
the soak benchmark prints them every minute."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

_HASH_TYPES = {1, 5, 9, 10}  # hash, percpu hash, LRU hash, LRU percpu hash: the maps that fill and empty
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class AgentSnapshot:
    rss_kb: int
    cpu_s: float  # user + system, since the process started
    fds: int
    maps: dict[str, int] = field(default_factory=dict)  # hash map name -> entries now


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK  # utime, stime (fields 14 and 15)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def bpf_hash_maps(pid: int) -> dict[int, str]:
    """map id -> name of the hash maps the process holds open."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                info = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:  # closed meanwhile
            continue
        if "map_id" in info and int(info.get("map_type", -1)) in _HASH_TYPES:
            map_id = int(info["map_id"])
            shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True,
                                              text=True, check=True).stdout)
            out[map_id] = shown.get("name", str(map_id))
    return out


def map_dump(map_id: int) -> list[dict]:
    """The map's entries as bpftool gives them ("formatted": {"key", "value"} through BTF); [] once it is gone."""
    r = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], capture_output=True, text=True)
    if r.returncode != 0:  # the map is gone (the agent ended)
        return []
    return json.loads(r.stdout or "[]")


def map_entries(map_id: int) -> int:
    return len(map_dump(map_id))


def entries_of_exited_processes(map_id: int) -> int:
    """Entries of a map keyed by tgid << 32 | fd (fd_verdicts) whose process no longer exists: what would leak."""
    tgids = [e["formatted"]["key"] >> 32 for e in map_dump(map_id)]
    return sum(1 for tgid in tgids if not os.path.exists(f"/proc/{tgid}"))


def snapshot(pid: int, maps: dict[int, str] | None = None) -> AgentSnapshot:
    """The process's figures now; `maps` (from bpf_hash_maps) saves finding the maps again."""
    maps = bpf_hash_maps(pid) if maps is None else maps
    return AgentSnapshot(rss_kb(pid), cpu_s(pid), open_fds(pid),
                         {name: map_entries(map_id) for map_id, name in sorted(maps.items())})
