"""Cgroups laid out like a container runtime's, so that a plain process looks like a container to the agent.

    docker   <v2 root>/system.slice/docker-<64 hex>.scope
    k8s      <v2 root>/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
             cri-containerd-<64 hex>.scope
A workload started with `preexec_fn=container.enter` runs inside; `remove()` (or the context manager)
takes the directories away again once its processes are gone.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid

from otel_kafka_ebpf.capture.loader import cgroup2_root


class FakeContainer:
    def __init__(self, kind: str = "docker") -> None:
        root = cgroup2_root()
        if root is None:
            raise RuntimeError("no cgroup v2 hierarchy is mounted")
        self.container_id = secrets.token_hex(32)
        self.pod_uid = None
        if kind == "docker":
            parts = ["system.slice", f"docker-{self.container_id}.scope"]
        elif kind == "k8s":
            self.pod_uid = str(uuid.uuid4())
            pod = f"kubepods-besteffort-pod{self.pod_uid.replace('-', '_')}.slice"
            parts = ["kubepods.slice", "kubepods-besteffort.slice", pod, f"cri-containerd-{self.container_id}.scope"]
        else:
            raise ValueError(kind)
        self._created: list[str] = []
        path = root
        for part in parts:
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                self._created.append(path)
        self.path = path

    def enter(self) -> None:
        """Move the calling process into this cgroup (a `preexec_fn`)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))

    def remove(self, timeout_s: float = 10.0) -> None:
        """The container's cgroup (waiting for its processes to be gone), then parents nobody else uses."""
        deadline = time.monotonic() + timeout_s
        for i, path in enumerate(reversed(self._created)):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # the leaf: processes still exiting; a parent: another container's too
                    if i > 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)

    def __enter__(self) -> "FakeContainer":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
