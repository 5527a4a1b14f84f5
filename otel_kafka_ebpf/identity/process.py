"""pid -> the OpenTelemetry resource of a process: who produced and who consumed.

Everything comes from the process's own view of itself, read once when the agent first meets it:
its environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, HOSTNAME in Kubernetes), its command
line, its executable, its cgroup (container and pod ids) and its root (the service account's
namespace). service.name, in order: the process's OTEL_SERVICE_NAME; service.name in its
OTEL_RESOURCE_ATTRIBUTES; the Kubernetes workload (from the pod name); the program that runs in an
interpreter (a Java main class or jar, a Python script or module, a Node.js script); the executable.
Attribute names are OpenTelemetry's resource semantic conventions.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from .cgroup import parse_proc_cgroup

# Resource attribute names (semantic conventions)
SERVICE_NAME = "service.name"
PROCESS_PID = "process.pid"
PROCESS_EXECUTABLE_NAME = "process.executable.name"
PROCESS_EXECUTABLE_PATH = "process.executable.path"
PROCESS_COMMAND_ARGS = "process.command_args"
PROCESS_RUNTIME_NAME = "process.runtime.name"
HOST_NAME = "host.name"
CONTAINER_ID = "container.id"
K8S_POD_UID = "k8s.pod.uid"
K8S_POD_NAME = "k8s.pod.name"
K8S_NAMESPACE_NAME = "k8s.namespace.name"

_SA_NAMESPACE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_ENVIRON = 1 << 20  # bytes of /proc/<pid>/environ read at most
MAX_CACHED = 4096  # processes remembered


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    attributes: Mapping[str, object]  # resource attributes; values are str, int or list[str]
    start_time: int = 0  # clock ticks after boot (/proc/<pid>/stat field 22): tells a reused pid apart
    main: str | None = None  # the program an interpreter runs (Java main class, script), when found
    exited: bool = False  # already gone when first looked at: only what the capture knew

    @property
    def service_name(self) -> str:
        return str(self.attributes.get(SERVICE_NAME, ""))

    @property
    def is_kafka_broker(self) -> bool:
        """The Apache Kafka server's main class (broker and controller)."""
        return self.main == "kafka.Kafka"

    def to_dict(self) -> dict:
        return {"pid": self.pid, "start_time": self.start_time, "main": self.main, "exited": self.exited,
                "attributes": dict(self.attributes)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ProcessIdentity":
        attrs = data["attributes"]
        if not isinstance(attrs, Mapping):
            raise ValueError("attributes is not a table")
        return cls(int(data["pid"]), dict(attrs), int(data.get("start_time") or 0), data.get("main"),
                   bool(data.get("exited")))


def parse_resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES: `key1=value1,key2=value2`, values percent-encoded; bad pairs are skipped."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key:
            out[key] = unquote(value.strip())
    return out


def _read(path: str, limit: int = 1 << 16) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def _environ(proc: str) -> dict[str, str]:
    raw = _read(f"{proc}/environ", MAX_ENVIRON)
    env = {}
    if raw:
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def start_time(proc: str) -> int | None:
    raw = _read(f"{proc}/stat")
    if not raw:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after the last ')' are plain
    rest = raw[raw.rfind(b")") + 2:].split()
    try:
        return int(rest[19])  # field 22
    except (IndexError, ValueError):
        return None


_JAVA_OPTS_WITH_VALUE = {"-cp", "-classpath", "--class-path", "-p", "--module-path", "--add-modules",
                         "--add-opens", "--add-exports", "--add-reads", "--limit-modules", "--upgrade-module-path",
                         "--patch-module", "--enable-native-access"}
_PYTHON_OPTS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
_NODE_OPTS_WITH_VALUE = {"-r", "--require", "--import", "--loader", "--experimental-loader", "--env-file",
                         "--inspect-port", "--title", "--conditions", "-C"}
_GENERIC_SCRIPT_NAMES = {"index", "main", "server", "app", "__main__", "cli", "run"}


def program_name(argv: list[str], exe_name: str) -> tuple[str | None, str | None]:
    """(runtime, the program it runs) for Java, Python and Node.js command lines; (None, None) otherwise."""
    base = os.path.basename(argv[0]) if argv else exe_name
    args = argv[1:]
    for name in (exe_name, base):
        if name == "java":
            return "java", _main_argument(args, _JAVA_OPTS_WITH_VALUE, _JAVA_MARKERS)
        if re.fullmatch(r"python[0-9.]*", name) or name in ("pypy", "pypy3"):
            split = []
            for a in args:  # `-mpkg` is `-m pkg`
                split += ["-m", a[2:]] if a.startswith("-m") and len(a) > 2 else [a]
            return "python", _main_argument(split, _PYTHON_OPTS_WITH_VALUE, _PYTHON_MARKERS)
        if name in ("node", "nodejs"):
            return "node", _main_argument(args, _NODE_OPTS_WITH_VALUE, {})
    return None, None


# Options that name the program themselves: what the program is, from the option's value (None: no program)
_JAVA_MARKERS = {"-jar": os.path.basename, "-m": lambda v: v.split("/")[-1], "--module": lambda v: v.split("/")[-1]}
_PYTHON_MARKERS = {"-m": lambda v: v, "-c": None}


def _main_argument(args: list[str], opts_with_value: set[str], markers: dict) -> str | None:
    """The first argument that is not an option (options' values skipped), or what a marker option names."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in markers:
            name = markers[a]
            return name(args[i + 1]) if name is not None and i + 1 < len(args) else None
        if a in opts_with_value:
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            return a
    return None


def _service_from_program(runtime: str, main: str) -> str:
    if runtime == "java":
        if main.endswith(".jar"):
            return main[:-4]
        return main.rsplit(".", 1)[-1] or main  # a main class: its simple name
    if runtime == "python" and not ("/" in main or main.endswith(".py")):
        return main  # `-m package.module`
    path = main.rstrip("/")
    stem = os.path.basename(path)
    for suffix in (".py", ".js", ".mjs", ".cjs", ".ts"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem in _GENERIC_SCRIPT_NAMES:  # node index.js, python app/main.py: the directory says more
        parent = os.path.basename(os.path.dirname(path))
        if parent:
            return parent
    return stem


_DEPLOYMENT_POD = re.compile(r"^(.+)-[0-9a-f]{6,10}-[0-9a-z]{5}$")  # <deployment>-<template hash>-<suffix>
_GENERATED_POD = re.compile(r"^(.+)-[0-9a-z]{5}$")  # <daemonset|job>-<suffix>
_STATEFUL_POD = re.compile(r"^(.+)-[0-9]+$")  # <statefulset>-<ordinal>


def workload_name(pod_name: str) -> str:
    """The workload a pod belongs to, from the names Kubernetes controllers give their pods."""
    for pattern in (_DEPLOYMENT_POD, _STATEFUL_POD, _GENERATED_POD):
        m = pattern.match(pod_name)
        if m:
            return m.group(1)
    return pod_name


def read_process_identity(pid: int, *, proc_root: str = "/proc", host_name: str | None = None,
                          comm: str | None = None, command_args: bool = False) -> ProcessIdentity:
    """Read a process's resource attributes; a process already gone yields what `comm` says."""
    proc = f"{proc_root}/{pid}"
    attrs: dict[str, object] = {PROCESS_PID: pid}
    if host_name:
        attrs[HOST_NAME] = host_name
    started = start_time(proc)
    if started is None:
        name = comm or "unknown"
        attrs[PROCESS_EXECUTABLE_NAME] = name
        attrs[SERVICE_NAME] = f"unknown_service:{name}"
        return ProcessIdentity(pid, attrs, 0, None, exited=True)

    env = _environ(proc)
    raw_cmdline = _read(f"{proc}/cmdline", 1 << 16) or b""
    argv = [a.decode("utf-8", "replace") for a in raw_cmdline.rstrip(b"\0").split(b"\0")] if raw_cmdline else []
    try:
        exe_path = os.readlink(f"{proc}/exe")
    except OSError:
        exe_path = None
    if exe_path and exe_path.endswith(" (deleted)"):
        exe_path = exe_path[: -len(" (deleted)")]
    comm_now = (_read(f"{proc}/comm") or b"").decode("utf-8", "replace").strip() or comm
    exe_name = os.path.basename(exe_path) if exe_path else (comm_now or "unknown")
    attrs[PROCESS_EXECUTABLE_NAME] = exe_name
    if exe_path:
        attrs[PROCESS_EXECUTABLE_PATH] = exe_path
    if command_args and argv:
        attrs[PROCESS_COMMAND_ARGS] = argv

    cg = parse_proc_cgroup((_read(f"{proc}/cgroup") or b"").decode("utf-8", "replace"))
    if cg.container_id:
        attrs[CONTAINER_ID] = cg.container_id
    if cg.pod_uid:
        attrs[K8S_POD_UID] = cg.pod_uid
    in_k8s = cg.pod_uid is not None or "KUBERNETES_SERVICE_HOST" in env
    pod_name = None
    if in_k8s:
        pod_name = env.get("HOSTNAME") or (_read(f"{proc}/root/etc/hostname") or b"").decode().strip() or None
        if pod_name:
            attrs[K8S_POD_NAME] = pod_name
        ns = (_read(f"{proc}/root/{_SA_NAMESPACE}") or b"").decode("utf-8", "replace").strip()
        if ns:
            attrs[K8S_NAMESPACE_NAME] = ns

    runtime, main = program_name(argv, exe_name)
    if runtime:
        attrs[PROCESS_RUNTIME_NAME] = runtime

    own = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = env.get("OTEL_SERVICE_NAME", "").strip() or own.get(SERVICE_NAME)
    if not service and pod_name:
        service = workload_name(pod_name)
    if not service and main:
        service = _service_from_program(runtime, main)
    if not service:
        service = exe_name
    for key, value in own.items():  # the process's own words win over what the agent inferred
        attrs[key] = value
    attrs[SERVICE_NAME] = service
    return ProcessIdentity(pid, attrs, started, main)


@dataclass
class ProcessDirectory:
    """Identities by pid, read at first sight and kept (bounded); a reused pid is read again."""

    host_name: str | None = None
    command_args: bool = False
    proc_root: str = "/proc"
    read_proc: bool = True  # False for a replay: this host's /proc says nothing of the recorded processes
    known: "OrderedDict[int, ProcessIdentity]" = field(default_factory=OrderedDict)
    reads: int = 0

    def get(self, pid: int, comm: str | None = None) -> ProcessIdentity:
        ident = self.known.get(pid)
        if not self.read_proc:
            if ident is None:
                ident = read_process_identity(pid, proc_root="/nonexistent", host_name=self.host_name, comm=comm)
                self.remember(ident)
            return ident
        if ident is not None:
            if ident.exited or ident.start_time == 0:
                return ident
            now = start_time(f"{self.proc_root}/{pid}")
            if now is None or now == ident.start_time:  # gone since, or the same process
                self.known.move_to_end(pid)
                return ident
        ident = read_process_identity(pid, proc_root=self.proc_root, host_name=self.host_name, comm=comm,
                                      command_args=self.command_args)
        self.reads += 1
        self.remember(ident)
        return ident

    def peek(self, pid: int) -> ProcessIdentity | None:
        """What is known already, without reading /proc (replay, or a hot path)."""
        return self.known.get(pid)

    def remember(self, ident: ProcessIdentity) -> None:
        self.known[ident.pid] = ident
        self.known.move_to_end(ident.pid)
        while len(self.known) > MAX_CACHED:
            self.known.popitem(last=False)
