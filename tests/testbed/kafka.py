"""A real single-node Apache Kafka (KRaft, combined broker+controller) for tests and demos.

The jars come from Maven Central (``tests/testbed/kafka/pom.xml``) into
``$OKE_CACHE/kafka-<version>/libs`` (default cache ``~/.cache/otel-kafka-ebpf``).

    with KafkaBroker() as kb:              # free ports, fresh temp dir
        kb.create_topic("t", partitions=3)
        kb.run_tool("kafka-consumer-groups", "--bootstrap-server", kb.bootstrap, "--list")

Command line (from the repository root):

    python -m tests.testbed.kafka jars
    python -m tests.testbed.kafka up [--port 9092] [--dir DIR]
    python -m tests.testbed.kafka status [--port 9092] [--dir DIR]
    python -m tests.testbed.kafka down [--port 9092] [--dir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

KAFKA_VERSION = os.environ.get("OKE_KAFKA_VERSION", "4.2.1")
POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

# Short names (as in Kafka's bin/ scripts) for the main classes run_tool() accepts.
TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-share-groups": "org.apache.kafka.tools.consumer.group.ShareGroupCommand",
    "kafka-streams-groups": "org.apache.kafka.tools.streams.StreamsGroupCommand",
    "kafka-groups": "org.apache.kafka.tools.GroupsCommand",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-share-consumer": "org.apache.kafka.tools.consumer.ConsoleShareConsumer",
    "kafka-producer-perf-test": "org.apache.kafka.tools.ProducerPerformance",
    "kafka-consumer-perf-test": "org.apache.kafka.tools.ConsumerPerformance",
    "kafka-share-consumer-perf-test": "org.apache.kafka.tools.ShareConsumerPerformance",
    "kafka-verifiable-producer": "org.apache.kafka.tools.VerifiableProducer",
    "kafka-verifiable-consumer": "org.apache.kafka.tools.VerifiableConsumer",
    "kafka-e2e-latency": "org.apache.kafka.tools.EndToEndLatency",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-features": "org.apache.kafka.tools.FeatureCommand",
    "kafka-transactions": "org.apache.kafka.tools.TransactionsCommand",
    "kafka-broker-api-versions": "org.apache.kafka.tools.BrokerApiVersionsCommand",
    "kafka-metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "kafka-delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "kafka-log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "kafka-leader-election": "org.apache.kafka.tools.LeaderElectionCommand",
    "kafka-client-metrics": "org.apache.kafka.tools.ClientMetricsCommand",
    "kafka-cluster": "org.apache.kafka.tools.ClusterTool",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-dump-log": "kafka.tools.DumpLogSegments",
    "kafka-storage": "kafka.tools.StorageTool",
}

_BROKER_JVM = ["-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
# Tools are short-lived: small heap, quick start.
_TOOL_JVM = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Djava.awt.headless=true"]

_LOG4J2_BROKER = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

_LOG4J2_TOOLS = """\
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
"""


class KafkaError(RuntimeError):
    """The test broker could not be provisioned, started or used."""


# --------------------------------------------------------------------------- jars

def cache_dir() -> Path:
    return Path(os.environ.get("OKE_CACHE") or Path.home() / ".cache" / "otel-kafka-ebpf")


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}"


def ensure_kafka_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Fetch the broker and tool jars once (Maven); return the libs directory.

    Idempotent: a stamp file holding a digest of the pom and the version marks a complete
    download; concurrent callers serialise on a lock file.
    """
    home = kafka_home(version)
    libs = home / "libs"
    stamp = home / "libs.stamp"
    want = hashlib.sha256(POM.read_bytes() + version.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == want:
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == want:
            return libs
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise KafkaError("java and mvn are needed for the Kafka test bed "
                             "(Debian: apt-get install openjdk-17-jdk-headless maven; "
                             "or `make apt-deps`)")
        shutil.rmtree(libs, ignore_errors=True)
        cmd = ["mvn", "-B", "-f", str(POM), f"-Dkafka.version={version}",
               "dependency:copy-dependencies", f"-DoutputDirectory={libs}"]
        if quiet:
            cmd.insert(1, "-q")
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0 or not (libs / f"kafka_2.13-{version}.jar").is_file():
            raise KafkaError(f"fetching Kafka {version} jars failed (exit {res.returncode}):\n"
                             + res.stdout[-4000:])
        stamp.write_text(want + "\n")
    return libs


def classpath(version: str = KAFKA_VERSION) -> str:
    return str(ensure_kafka_jars(version) / "*")


# --------------------------------------------------------------------------- wire probe

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def api_versions(host: str, port: int, timeout: float = 5.0,
                 client_id: str = "oke-testbed-probe") -> dict[int, tuple[int, int]]:
    """Send a raw ApiVersions v0 request; return {api_key: (min_version, max_version)}.

    Raises (ConnectionError, OSError, ValueError) if there is no well-formed answer.
    """
    correlation_id = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    cid = client_id.encode()
    # request header v1: api_key, api_version, correlation_id, client_id (nullable string)
    body = struct.pack(">hhih", 18, 0, correlation_id, len(cid)) + cid
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 10 <= size <= 1 << 20:
            raise ValueError(f"implausible ApiVersions response size {size}")
        resp = _recv_exact(sock, size)
    got_cid, error_code, count = struct.unpack_from(">ihi", resp, 0)
    if got_cid != correlation_id:
        raise ValueError(f"correlation id {got_cid} != {correlation_id}")
    if error_code != 0:
        raise ValueError(f"ApiVersions error_code {error_code}")
    if count <= 0 or size != 10 + 6 * count:
        raise ValueError(f"malformed ApiVersions v0 response: {count} apis in {size} bytes")
    out = {}
    for i in range(count):
        key, lo, hi = struct.unpack_from(">hhh", resp, 10 + 6 * i)
        out[key] = (lo, hi)
    return out


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return f"<no {path.name}>"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- tools

class KafkaTools:
    """Things that only need a bootstrap address: the Kafka command line tools, topics."""

    version = KAFKA_VERSION

    def __init__(self, bootstrap: str):
        self._bootstrap = bootstrap

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    @property
    def host(self) -> str:
        return self.bootstrap.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    @property
    def direct_bootstrap(self) -> str:
        """Address whose metadata points back at itself (bypasses any recording proxy)."""
        return self.bootstrap

    def api_versions(self, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
        host, port = self.direct_bootstrap.rsplit(":", 1)
        return api_versions(host, int(port), timeout)

    def _tool_log4j(self) -> Path:
        path = kafka_home(self.version) / "tools-log4j2.properties"
        if not path.is_file() or path.read_text() != _LOG4J2_TOOLS:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(_LOG4J2_TOOLS)
            os.replace(tmp, path)
        return path

    def run_tool(self, main_class_or_alias: str, *args: str, timeout: float = 120,
                 check: bool = False, input: str | None = None,
                 jvm_args: Iterable[str] = ()) -> subprocess.CompletedProcess:
        """Run a Kafka tool (alias such as ``kafka-topics`` or a main class) on the broker's
        classpath; returns the CompletedProcess with text stdout/stderr."""
        main = TOOLS.get(main_class_or_alias, main_class_or_alias)
        cp = classpath(self.version)
        cmd = ["java", *_TOOL_JVM, *jvm_args,
               f"-Dlog4j2.configurationFile={self._tool_log4j()}",
               "-cp", cp, main, *map(str, args)]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True,
                             timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise KafkaError(f"{main_class_or_alias} {' '.join(map(str, args))} exited "
                             f"{res.returncode}\nstdout:\n{res.stdout[-3000:]}\n"
                             f"stderr:\n{res.stderr[-3000:]}")
        return res

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None,
                     timeout: float = 120) -> str:
        """Create a topic (replication factor 1); no error if it already exists."""
        args = ["--bootstrap-server", self.direct_bootstrap, "--create", "--if-not-exists",
                "--topic", name, "--partitions", str(partitions), "--replication-factor", "1"]
        for k, v in (config or {}).items():
            args += ["--config", f"{k}={v}"]
        self.run_tool("kafka-topics", *args, timeout=timeout, check=True)
        return name

    def describe_topic(self, name: str) -> str:
        return self.run_tool("kafka-topics", "--bootstrap-server", self.direct_bootstrap,
                             "--describe", "--topic", name, check=True).stdout


class ExternalKafka(KafkaTools):
    """A broker somebody else runs (e.g. OKE_KAFKA_BOOTSTRAP); start/stop do nothing."""

    def start(self) -> "ExternalKafka":
        self.api_versions()
        return self

    def stop(self) -> None:
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- broker

_live: set["KafkaBroker"] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        brokers = list(_live)
    for b in brokers:
        with contextlib.suppress(Exception):
            b.stop()


atexit.register(_stop_all_at_exit)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: no dlopen between fork and exec


def _die_with_parent_fn():
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # parent already gone
            os._exit(1)
    return preexec


class KafkaBroker(KafkaTools):
    """A single-node KRaft Kafka (broker+controller) on 127.0.0.1.

    port: PLAINTEXT port (0 = free port). log_dir: base directory (fresh temp dir if None);
    it holds ``data/`` (log.dirs), ``server.properties``, ``server.log`` and ``jvm.out``.
    advertised_port: advertise 127.0.0.1:advertised_port on the PLAINTEXT listener (for a
    recording proxy there); an extra DIRECT listener then serves tools (``direct_bootstrap``).
    daemon: the JVM outlives this Python process (used by the CLI); otherwise the JVM is
    killed when this process exits, however it exits (atexit, plus PR_SET_PDEATHSIG for
    SIGKILL of the parent: start the broker from the main thread, since the kernel ties that
    signal to the thread that forked).
    sasl_plain_users: {user: password}: an extra SASL_PLAINTEXT listener with the PLAIN mechanism
    for these users (``sasl_bootstrap``); the PLAINTEXT listener stays as it is.
    """

    def __init__(self, port: int = 0, log_dir: str | os.PathLike | None = None,
                 advertised_port: int | None = None, heap: str = "512m",
                 startup_timeout: float = 120.0, extra_config: dict | None = None,
                 version: str = KAFKA_VERSION, daemon: bool = False, keep_dir: bool | None = None,
                 sasl_plain_users: dict[str, str] | None = None):
        self.version = version
        self._want_port = port
        self._given_dir = log_dir
        self.advertised_port = advertised_port
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.extra_config = dict(extra_config or {})
        self.daemon = daemon
        self.keep_dir = (log_dir is not None) if keep_dir is None else keep_dir
        self.log_dir: Path | None = Path(log_dir) if log_dir is not None else None
        self.proc: subprocess.Popen | None = None
        self._port: int | None = None
        self.controller_port: int | None = None
        self.direct_port: int | None = None
        self.cluster_id: str | None = None
        self.sasl_plain_users = dict(sasl_plain_users or {})
        self.sasl_port: int | None = None

    # -- addresses
    @property
    def port(self) -> int:
        if self._port is None:
            raise KafkaError("broker not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def advertised_bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    @property
    def direct_bootstrap(self) -> str:
        return f"127.0.0.1:{self.direct_port}" if self.direct_port else self.bootstrap

    @property
    def sasl_bootstrap(self) -> str:
        if not self.sasl_port:
            raise KafkaError("broker has no SASL listener (sasl_plain_users)")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def data_dir(self) -> Path:
        return self.log_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.log_dir / "kafka.pid"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle
    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _server_properties(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self._port}",
                     f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.advertised_port or self._port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        inter = "PLAINTEXT"
        if self.direct_port:
            listeners.append(f"DIRECT://127.0.0.1:{self.direct_port}")
            advertised.append(f"DIRECT://127.0.0.1:{self.direct_port}")
            protocols.append("DIRECT:PLAINTEXT")
            inter = "DIRECT"
        sasl = {}
        if self.sasl_port:
            listeners.append(f"SASL://127.0.0.1:{self.sasl_port}")
            advertised.append(f"SASL://127.0.0.1:{self.sasl_port}")
            protocols.append("SASL:SASL_PLAINTEXT")
            users = " ".join(f'user_{u}="{pw}"' for u, pw in self.sasl_plain_users.items())
            sasl = {"sasl.enabled.mechanisms": "PLAIN",
                    "listener.name.sasl.plain.sasl.jaas.config":
                        f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"}
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocols),
            "inter.broker.listener.name": inter,
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "300000",
        }
        props.update(sasl)
        props.update({k: str(v) for k, v in self.extra_config.items()})
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, *args: str, jvm: Iterable[str] = ()) -> list[str]:
        return ["java", *jvm, f"-Dlog4j2.configurationFile={self.log_dir / 'log4j2.properties'}",
                "-cp", classpath(self.version), *args]

    def start(self) -> "KafkaBroker":
        if self.proc is not None:
            return self
        ensure_kafka_jars(self.version)
        attempts = 3 if self._want_port == 0 else 1
        for attempt in range(attempts):
            try:
                return self._start_once()
            except KafkaError as e:
                bind_clash = "Address already in use" in str(e)
                self._kill()
                if not bind_clash or attempt == attempts - 1:
                    self._cleanup_dir()
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> "KafkaBroker":
        if self._given_dir is None:
            self._cleanup_dir()  # a previous attempt's temp dir
            self.log_dir = Path(tempfile.mkdtemp(prefix="oke-kafka-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._port = self._want_port or free_port()
        self.controller_port = free_port()
        self.direct_port = free_port() if self.advertised_port else None
        self.sasl_port = free_port() if self.sasl_plain_users else None
        (self.log_dir / "server.properties").write_text(self._server_properties())
        (self.log_dir / "log4j2.properties").write_text(
            _LOG4J2_BROKER.format(log_file=self.log_file))
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()

        self.cluster_id = _random_cluster_id()
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone",
                       f"--cluster-id={self.cluster_id}",  # one token: ids may start with '-'
                       "--config", str(self.log_dir / "server.properties"), jvm=_TOOL_JVM),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if fmt.returncode != 0:
            raise KafkaError(f"formatting storage in {self.data_dir} failed:\n"
                             f"{fmt.stdout[-2000:]}\n{fmt.stderr[-2000:]}")

        jvm_out = open(self.log_dir / "jvm.out", "wb")
        try:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.log_dir / "server.properties"),
                           jvm=[f"-Xmx{self.heap}", *_BROKER_JVM,
                                f"-Dkafka.logs.dir={self.log_dir}"]),
                stdin=subprocess.DEVNULL, stdout=jvm_out, stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                start_new_session=self.daemon,
                preexec_fn=None if self.daemon else _die_with_parent_fn())
        finally:
            jvm_out.close()
        if not self.daemon:
            with _live_lock:
                _live.add(self)
        else:
            self.pid_file.write_text(f"{self.proc.pid}\n")
            (self.log_dir / "broker.json").write_text(json.dumps({
                "pid": self.proc.pid, "port": self._port, "bootstrap": self.bootstrap,
                "controller_port": self.controller_port, "direct_port": self.direct_port,
                "advertised_port": self.advertised_port, "cluster_id": self.cluster_id,
                "version": self.version}) + "\n")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KafkaError(f"Kafka exited with code {self.proc.returncode} during "
                                 f"startup\n{self._diagnostics()}")
            try:
                apis = self.api_versions(timeout=2.0)
                if 0 in apis and 1 in apis:
                    return
                last = f"ApiVersions lacks Produce/Fetch: {sorted(apis)}"
            except (OSError, ValueError, struct.error) as e:
                last = repr(e)
            time.sleep(0.25)
        raise KafkaError(f"Kafka on {self.bootstrap} not ready after {self.startup_timeout:.0f}s "
                         f"(last probe: {last})\n{self._diagnostics()}")

    def _diagnostics(self) -> str:
        return (f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}\n"
                f"--- {self.log_dir / 'jvm.out'} (tail) ---\n{_tail(self.log_dir / 'jvm.out', 20)}")

    def _kill(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with _live_lock:
            _live.discard(self)
        _terminate(proc.pid, grace, proc)

    def _cleanup_dir(self) -> None:
        if not self.keep_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after `grace` seconds."""
        was_running = self.proc is not None
        self._kill(grace)
        if self.daemon:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        if was_running:
            self._cleanup_dir()


def _terminate(pid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process (and its process group if it leads one), then SIGKILL."""
    def send(sig):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def alive() -> bool:
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with contextlib.suppress(OSError):  # zombie of someone else's = gone
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        return True

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        send(signal.SIGKILL)
        end = time.monotonic() + 10
        while alive() and time.monotonic() < end:
            time.sleep(0.05)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


def _random_cluster_id() -> str:
    import base64
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --------------------------------------------------------------------------- CLI

def _run_dir(port: int, d: str | None) -> Path:
    return Path(d) if d else cache_dir() / "run" / f"kafka-{port}"


def _daemon_pid(run_dir: Path) -> int | None:
    """pid of the broker started in run_dir if it still runs (checked via its cmdline)."""
    try:
        pid = int((run_dir / "kafka.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"kafka.Kafka" in cmdline and str(run_dir / "server.properties").encode() in cmdline:
        return pid
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.testbed.kafka",
                                 description="single-node Kafka test broker on 127.0.0.1")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("jars", help="fetch the Kafka jars (idempotent); print the libs dir")
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, default=9092)
        p.add_argument("--dir", default=None,
                       help="run directory (default $OKE_CACHE/run/kafka-PORT)")
        if name == "up":
            p.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "jars":
            print(ensure_kafka_jars(quiet=False))
            return 0
        run_dir = _run_dir(args.port, args.dir)
        pid = _daemon_pid(run_dir)
        bootstrap = f"127.0.0.1:{args.port}"
        if args.cmd == "status":
            if pid is None:
                print(f"kafka: not running ({run_dir})")
                return 1
            try:
                api_versions("127.0.0.1", args.port, timeout=3)
            except (OSError, ValueError) as e:
                print(f"kafka: pid {pid} running but {bootstrap} does not answer ({e})")
                return 1
            print(f"kafka: up at {bootstrap} (pid {pid}, {run_dir})")
            return 0
        if args.cmd == "down":
            if pid is None:
                print(f"kafka: not running ({run_dir})")
                return 0
            _terminate(pid, grace=30)
            with contextlib.suppress(FileNotFoundError):
                (run_dir / "kafka.pid").unlink()
            print(f"kafka: stopped pid {pid}")
            return 0
        # up
        if pid is not None:
            with contextlib.suppress(OSError, ValueError):
                api_versions("127.0.0.1", args.port, timeout=3)
                print(f"kafka: already up at {bootstrap} (pid {pid})")
                print(bootstrap)
                return 0
            _terminate(pid, grace=10)  # running but deaf: restart
        try:
            api_versions("127.0.0.1", args.port, timeout=2)
        except (OSError, ValueError):
            pass
        else:
            print(f"kafka: port {args.port} already answers Kafka but was not started from "
                  f"{run_dir}; not starting another", file=sys.stderr)
            return 1
        b = KafkaBroker(port=args.port, log_dir=run_dir, daemon=True, keep_dir=True,
                        startup_timeout=args.timeout)
        try:
            b.start()
        except BaseException:
            b.stop()
            raise
        print(f"kafka: up at {b.bootstrap} (pid {b.pid}, log {b.log_file})", file=sys.stderr)
        print(b.bootstrap)
        return 0
    except KafkaError as e:
        print(f"kafka: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
