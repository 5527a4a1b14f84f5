"""Container and pod ids from a process's cgroup path.

Runtimes name the leaf cgroup of a container after its 64-hex id, in a few layouts:
  docker (cgroupfs)      /docker/<id>
  docker (systemd)       /system.slice/docker-<id>.scope
  containerd / CRI       /kubepods/besteffort/pod<uid>/<id>
                         /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
  cri-o                  .../crio-<id>.scope, /crio-<id>
  podman                 /machine.slice/libpod-<id>.scope, /libpod-<id>
The pod uid appears as `pod<uid>` (dashes) or, under the systemd driver, `pod<uid with underscores>`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_CONTAINER_ID = re.compile(r"(?:^|[/\-:])([0-9a-f]{64})(?:\.scope)?$")
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)")


class CgroupFacts(NamedTuple):
    path: str | None  # the cgroup v2 path (or the first v1 path with an id)
    container_id: str | None
    pod_uid: str | None


def parse_proc_cgroup(text: str) -> CgroupFacts:
    """Facts from the contents of /proc/<pid>/cgroup (v2 `0::/path` lines and v1 `N:ctrl:/path` lines)."""
    v2_path = None
    paths = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        paths.append(parts[2])
    if v2_path is not None:  # the unified hierarchy first, then whatever v1 knows
        paths.insert(0, v2_path)
    container_id = pod_uid = None
    for path in paths:
        if container_id is None:
            container_id = container_id_of(path)
        if pod_uid is None:
            pod_uid = pod_uid_of(path)
    return CgroupFacts(v2_path if v2_path is not None else (paths[0] if paths else None), container_id, pod_uid)


def container_id_of(path: str) -> str | None:
    for component in reversed(path.rstrip("/").split("/")):
        m = _CONTAINER_ID.search(component)
        if m:
            return m.group(1)
    return None


def pod_uid_of(path: str) -> str | None:
    m = _POD_UID.search(path)
    return m.group(1).replace("_", "-") if m else None
