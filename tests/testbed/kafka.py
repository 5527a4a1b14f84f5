"""A real Apache Kafka for tests and demos: a single KRaft node (combined broker+controller),
or a cluster of several such nodes (KafkaCluster).

The jars come from Maven Central (``tests/testbed/kafka/pom.xml``) into
``$OKE_CACHE/kafka-<version>/libs`` (default cache ``~/.cache/otel-kafka-ebpf``).

    with KafkaBroker() as kb:              # free ports, fresh temp dir
        kb.create_topic("t", partitions=3)
        kb.run_tool("kafka-consumer-groups", "--bootstrap-server", kb.bootstrap, "--list")
    with KafkaCluster(brokers=3) as kc:    # nodes 1..3, replication factor 3 by default
        kc.reassign_partition("t", 0, [2, 3])

Command line (from the repository root):

    python -m tests.testbed.kafka jars
    python -m tests.testbed.kafka up [--port 9092] [--brokers 3] [--dir DIR]
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
import re
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from tests.testbed.tls import TlsFiles, handshake, make_tls_files

KAFKA_VERSION = os.environ.get("OKE_KAFKA_VERSION", "4.2.1")
DEFAULT_SASL_SSL_USERS = {"oke": "oke-secret"}   # SASL_SSL's users when sasl_plain_users has none
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
    "kafka-reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
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


def ensure_maven_jars(pom: Path, home: Path, version_property: str, version: str,
                      want_jar: str, quiet: bool = True) -> Path:
    """Fetch the runtime jars a pom names (Maven Central) into home/libs, once; return that dir.

    Idempotent: a stamp file holding a digest of the pom and the version marks a complete
    download; concurrent callers serialise on a lock file. want_jar is a file name that must be
    there afterwards (the main artifact); the pom takes its version as -D<version_property>.
    """
    libs = home / "libs"
    stamp = home / "libs.stamp"
    want = hashlib.sha256(pom.read_bytes() + version.encode()).hexdigest()
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
        cmd = ["mvn", "-B", "-f", str(pom), f"-D{version_property}={version}",
               "dependency:copy-dependencies", f"-DoutputDirectory={libs}"]
        if quiet:
            cmd.insert(1, "-q")
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0 or not (libs / want_jar).is_file():
            raise KafkaError(f"fetching the jars of {pom.parent.name} {version} failed "
                             f"(exit {res.returncode}):\n" + res.stdout[-4000:])
        stamp.write_text(want + "\n")
    return libs


def ensure_kafka_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Fetch the broker and tool jars once (Maven); return the libs directory."""
    return ensure_maven_jars(POM, kafka_home(version), "kafka.version", version,
                             f"kafka_2.13-{version}.jar", quiet)


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


def tail_file(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return f"<no {path.name}>"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- tools

@dataclass(frozen=True)
class PartitionState:
    """One partition as `kafka-topics --describe` shows it (leader None: no leader)."""
    leader: int | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class GroupOffset(NamedTuple):
    """One row of `kafka-consumer-groups --describe`: (committed, log_end, lag); None where the
    tool shows '-'."""
    committed: int | None
    log_end: int | None
    lag: int | None


def _int_or_none(field: str) -> int | None:
    return None if field == "-" else int(field)


def _broker_ids(field: str) -> tuple[int, ...]:
    return tuple(int(x) for x in field.split(",") if x.strip())


class KafkaTools:
    """Things that only need a bootstrap address: the Kafka command line tools, topics, groups."""

    version = KAFKA_VERSION
    default_replication_factor = 1

    def __init__(self, bootstrap: str):
        self._bootstrap = bootstrap

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    @property
    def host(self) -> str:
        return self.bootstrap.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def direct_bootstrap(self) -> str:
        """Address whose metadata points back at itself (bypasses any recording proxy)."""
        return self.bootstrap

    def api_versions(self, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
        host, port = self.direct_bootstrap.split(",")[0].rsplit(":", 1)
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

    def _admin_tool(self, tool: str, *args: str, **kw) -> str:
        """stdout of a tool run against this cluster (--bootstrap-server), failing on exit != 0."""
        return self.run_tool(tool, "--bootstrap-server", self.direct_bootstrap, *args,
                             check=True, **kw).stdout

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None,
                     timeout: float = 120, replication_factor: int | None = None) -> str:
        """Create a topic (replication factor: the cluster's default, 1 for a single broker);
        no error if it already exists."""
        rf = replication_factor or self.default_replication_factor
        args = ["--create", "--if-not-exists", "--topic", name, "--partitions", str(partitions),
                "--replication-factor", str(rf)]
        for k, v in (config or {}).items():
            args += ["--config", f"{k}={v}"]
        self._admin_tool("kafka-topics", *args, timeout=timeout)
        return name

    def describe_topic(self, name: str) -> str:
        return self._admin_tool("kafka-topics", "--describe", "--topic", name)

    def partitions(self, topic: str) -> dict[int, PartitionState]:
        """partition -> its leader, replicas and in-sync replicas, as `kafka-topics` sees them."""
        out = {}
        for line in self.describe_topic(topic).splitlines():
            m = re.search(r"\bPartition: (\d+)\s+Leader: (-?\d+|none)\s+Replicas: ([\d,]*)"
                          r"\s+Isr: ([\d,]*)", line)
            if m:
                leader = None if m.group(2) in ("none", "-1") else int(m.group(2))
                out[int(m.group(1))] = PartitionState(leader, _broker_ids(m.group(3)),
                                                      _broker_ids(m.group(4)))
        if not out:
            raise KafkaError(f"no partitions of {topic} in kafka-topics --describe")
        return out

    def end_offsets(self, topic: str) -> dict[int, int]:
        """partition -> log end offset (`kafka-get-offsets`, latest)."""
        out = {}
        for line in self._admin_tool("kafka-get-offsets", "--topic", topic).splitlines():
            name, partition, offset = line.strip().rsplit(":", 2)
            if name == topic:
                out[int(partition)] = int(offset)
        return out

    def group_offsets(self, group: str) -> dict[tuple[str, int], GroupOffset]:
        """(topic, partition) -> committed offset, log end offset and lag, from Kafka's own
        `kafka-consumer-groups --describe` (its table, parsed; '-' is None)."""
        text = self._admin_tool("kafka-consumer-groups", "--describe", "--group", group)
        out = {}
        columns = None
        for line in text.splitlines():
            fields = line.split()
            if fields[:1] == ["GROUP"]:
                columns = {name: i for i, name in enumerate(fields)}
            elif columns and len(fields) >= len(columns) - 2 and fields[0] == group:
                # CONSUMER-ID, HOST and CLIENT-ID come last; the six before them are fixed
                out[(fields[columns["TOPIC"]], int(fields[columns["PARTITION"]]))] = GroupOffset(
                    _int_or_none(fields[columns["CURRENT-OFFSET"]]),
                    _int_or_none(fields[columns["LOG-END-OFFSET"]]),
                    _int_or_none(fields[columns["LAG"]]))
        return out

    def reassign_partition(self, topic: str, partition: int, replicas: list[int],
                           timeout: float = 180) -> PartitionState:
        """Move a partition to `replicas` (kafka-reassign-partitions --execute), wait until the move
        is complete, then make replicas[0] its leader (kafka-leader-election, preferred) and wait
        until it is; return the partition's final state. The waiting reads metadata through the
        Admin API (kafka-python): a tool run per look would take seconds each."""
        from kafka.admin import KafkaAdminClient

        plan = {"version": 1, "partitions": [
            {"topic": topic, "partition": partition, "replicas": list(replicas)}]}
        want = tuple(replicas)
        deadline = time.monotonic() + timeout
        admin = KafkaAdminClient(bootstrap_servers=self.direct_bootstrap.split(","),
                                 client_id="oke-testbed-reassign")

        def state() -> PartitionState:
            (desc,) = admin.describe_topics([topic])
            p = next(p for p in desc["partitions"] if p["partition_index"] == partition)
            return PartitionState(p["leader_id"] if p["leader_id"] >= 0 else None,
                                  tuple(p["replica_nodes"]), tuple(p["isr_nodes"]))

        def wait(done, what: str, within: float) -> PartitionState | None:
            """The state once done(state); None if not within `within` s; KafkaError at the deadline."""
            until = min(deadline, time.monotonic() + within)
            while True:
                now = state()
                if done(now):
                    return now
                if time.monotonic() > deadline:
                    raise KafkaError(f"{topic}-{partition} {what} after {timeout:.0f}s: {now}")
                if time.monotonic() > until:
                    return None
                time.sleep(0.2)

        try:
            with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="oke-reassign-") as f:
                json.dump(plan, f)
                f.flush()
                self._admin_tool("kafka-reassign-partitions", "--reassignment-json-file", f.name,
                                 "--execute")
            now = wait(lambda now: (now.replicas == want and set(now.isr) == set(want)
                                    and not admin.list_partition_reassignments({topic: [partition]})),
                       f"not moved to {replicas}", timeout)
            while now.leader != replicas[0]:
                # an election that did not take (yet) is simply run again
                self.run_tool("kafka-leader-election", "--bootstrap-server", self.direct_bootstrap,
                              "--election-type", "PREFERRED", "--topic", topic,
                              "--partition", str(partition))
                now = (wait(lambda now: now.leader == replicas[0], f"not led by {replicas[0]}", 5)
                       or state())
            return now
        finally:
            admin.close()


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

# Test-bed servers this process started (brokers, ZooKeeper, Burrow): stopped at exit.
_live: set = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


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


def spawn(owner, argv: list[str], out_path: Path, cwd: Path,
          daemon: bool = False) -> subprocess.Popen:
    """Start a test-bed server process for `owner` (which has stop()), output to out_path.

    daemon: it outlives this Python process (its own session). Otherwise it is killed when this
    process exits, however it exits: atexit stops `owner`, and PR_SET_PDEATHSIG covers SIGKILL
    of the parent (call from the main thread: the kernel ties that signal to the thread that
    forked)."""
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=daemon,
                                preexec_fn=None if daemon else _die_with_parent_fn())
    if not daemon:
        with _live_lock:
            _live.add(owner)
    return proc


def reap(owner, proc: subprocess.Popen | None, grace: float) -> None:
    """Stop what spawn(owner, ...) started: SIGTERM, SIGKILL after `grace` seconds."""
    with _live_lock:
        _live.discard(owner)
    if proc is not None:
        terminate(proc.pid, grace, proc)


class KafkaBroker(KafkaTools):
    """A single-node KRaft Kafka (broker+controller) on 127.0.0.1; also one node of a KafkaCluster.

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
    tls: True (a new CA and broker certificate in ``log_dir/tls``) or a TlsFiles: two more
    listeners, SSL (``ssl_bootstrap``) and SASL_SSL with PLAIN (``sasl_ssl_bootstrap``, users
    ``sasl_ssl_users``: sasl_plain_users, else one default user); clients trust
    ``tls_files.ca``. Inter-broker traffic stays PLAINTEXT.
    """

    def __init__(self, port: int = 0, log_dir: str | os.PathLike | None = None,
                 advertised_port: int | None = None, heap: str = "512m",
                 startup_timeout: float = 120.0, extra_config: dict | None = None,
                 version: str = KAFKA_VERSION, daemon: bool = False, keep_dir: bool | None = None,
                 node_id: int = 1, sasl_plain_users: dict[str, str] | None = None,
                 tls: bool | TlsFiles = False):
        self.version = version
        self.node_id = node_id
        self.voters: str | None = None   # controller.quorum.voters, set by a KafkaCluster
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
        self.tls = tls
        self.sasl_ssl_users = dict(self.sasl_plain_users or DEFAULT_SASL_SSL_USERS) if tls else {}
        self._tls_files: TlsFiles | None = tls if isinstance(tls, TlsFiles) else None
        self.ssl_port: int | None = None
        self.sasl_ssl_port: int | None = None

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
    def ssl_bootstrap(self) -> str:
        if not self.ssl_port:
            raise KafkaError("broker has no SSL listener (tls)")
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        if not self.sasl_ssl_port:
            raise KafkaError("broker has no SASL_SSL listener (tls)")
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def tls_files(self) -> TlsFiles:
        """The CA (``.ca``) clients trust, and the broker's certificate and key."""
        if self._tls_files is None:
            raise KafkaError("broker has no TLS listeners (tls)")
        return self._tls_files

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
        if self.ssl_port:
            listeners.append(f"SSL://127.0.0.1:{self.ssl_port}")
            listeners.append(f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}")
            advertised.append(f"SSL://127.0.0.1:{self.ssl_port}")
            advertised.append(f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}")
            protocols += ["SSL:SSL", "SASL_SSL:SASL_SSL"]
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
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
        if self.voters:
            props["controller.quorum.voters"] = self.voters
        else:
            props["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{self.controller_port}"
        props.update(sasl)
        if self.ssl_port:
            props.update(self._tls_properties())
        props.update({k: str(v) for k, v in self.extra_config.items()})
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _tls_properties(self) -> dict[str, str]:
        """The SSL and SASL_SSL listeners' settings: a PEM keystore file (key, then chain)."""
        keystore = {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(self.tls_files.keystore)}
        users = " ".join(f'user_{u}="{pw}"' for u, pw in self.sasl_ssl_users.items())
        props = {"sasl.enabled.mechanisms": "PLAIN",
                 "listener.name.sasl_ssl.plain.sasl.jaas.config":
                     f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"}
        for listener in ("ssl", "sasl_ssl"):
            props.update({f"listener.name.{listener}.{k}": v for k, v in keystore.items()})
        return props

    def _java(self, *args: str, jvm: Iterable[str] = ()) -> list[str]:
        return ["java", *jvm, f"-Dlog4j2.configurationFile={self.log_dir / 'log4j2.properties'}",
                "-cp", classpath(self.version), *args]

    def start(self) -> "KafkaBroker":
        if self.proc is not None:
            return self
        return _start_retrying(self, abort=self._kill)

    def _start_once(self) -> "KafkaBroker":
        self._allocate()
        self._format()
        self._launch()
        self._wait_ready()
        return self

    # The steps of a start, apart so that a KafkaCluster can interleave them across its nodes:
    # every node's ports before any configuration (the voters name them all), every node
    # launched before any can be ready (a broker serves once the quorum has a leader).
    def _allocate(self) -> None:
        """A fresh directory and free ports."""
        if self._given_dir is None:
            self._cleanup_dir()  # a previous attempt's temp dir
            self.log_dir = Path(tempfile.mkdtemp(prefix="oke-kafka-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._port = self._want_port or free_port()
        self.controller_port = free_port()
        self.direct_port = free_port() if self.advertised_port else None
        self.sasl_port = free_port() if self.sasl_plain_users else None
        if self.tls:
            if not isinstance(self.tls, TlsFiles):
                self._tls_files = make_tls_files(self.log_dir / "tls")
            self.ssl_port, self.sasl_ssl_port = free_port(), free_port()

    def _format(self) -> None:
        """Write the configuration and format the storage (kafka-storage format)."""
        (self.log_dir / "server.properties").write_text(self._server_properties())
        (self.log_dir / "log4j2.properties").write_text(
            _LOG4J2_BROKER.format(log_file=self.log_file))
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()
        self.cluster_id = self.cluster_id or _random_cluster_id()
        quorum = [] if self.voters else ["--standalone"]   # static voters need no flag
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", *quorum,
                       f"--cluster-id={self.cluster_id}",  # one token: ids may start with '-'
                       "--config", str(self.log_dir / "server.properties"), jvm=_TOOL_JVM),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if fmt.returncode != 0:
            raise KafkaError(f"formatting storage in {self.data_dir} failed:\n"
                             f"{fmt.stdout[-2000:]}\n{fmt.stderr[-2000:]}")

    def _launch(self) -> None:
        """Start the JVM (from the main thread: see spawn())."""
        self.proc = spawn(self, self._java("kafka.Kafka", str(self.log_dir / "server.properties"),
                                           jvm=[f"-Xmx{self.heap}", *_BROKER_JVM,
                                                f"-Dkafka.logs.dir={self.log_dir}"]),
                          self.log_dir / "jvm.out", self.log_dir, self.daemon)
        if self.daemon:
            self.pid_file.write_text(f"{self.proc.pid}\n")
            (self.log_dir / "broker.json").write_text(json.dumps({
                "pid": self.proc.pid, "node_id": self.node_id, "port": self._port,
                "bootstrap": self.bootstrap, "controller_port": self.controller_port,
                "direct_port": self.direct_port, "advertised_port": self.advertised_port,
                "cluster_id": self.cluster_id, "version": self.version}) + "\n")

    def _wait_ready(self) -> None:
        def probe():
            apis = self.api_versions(timeout=2.0)
            if self.ssl_port:   # the TLS listener serves (whatever names a given certificate has)
                handshake("127.0.0.1", self.ssl_port, self.tls_files.ca, timeout=2.0, check_hostname=False)
            return (0 in apis and 1 in apis) or f"ApiVersions lacks Produce/Fetch: {sorted(apis)}"
        wait_ready(f"Kafka on {self.bootstrap}", self.proc, probe, self.startup_timeout, self._diagnostics)

    def _diagnostics(self) -> str:
        return (f"--- {self.log_file} (tail) ---\n{tail_file(self.log_file)}\n"
                f"--- {self.log_dir / 'jvm.out'} (tail) ---\n{tail_file(self.log_dir / 'jvm.out', 20)}")

    def _kill(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        reap(self, proc, grace)

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


def _start_retrying(server, abort):
    """server._start_once(); on free ports, again (3 tries) when one was taken before it was bound.
    After a failure, abort() stops what had started and the server's temp dir goes."""
    ensure_kafka_jars(server.version)
    attempts = 3 if server._want_port == 0 else 1
    for attempt in range(attempts):
        try:
            return server._start_once()
        except KafkaError as e:
            abort()
            if "Address already in use" not in str(e) or attempt == attempts - 1:
                server._cleanup_dir()
                raise
    raise AssertionError("unreachable")


def wait_ready(name: str, proc: subprocess.Popen, probe, timeout: float, diagnostics) -> None:
    """Poll probe() until it returns True (anything else, or OSError/ValueError/struct.error,
    says why not yet); KafkaError if proc exits or `timeout` seconds pass, with diagnostics()."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KafkaError(f"{name} exited with code {proc.returncode} during startup\n{diagnostics()}")
        try:
            got = probe()
            if got is True:
                return
            last = got
        except (OSError, ValueError, struct.error) as e:
            last = repr(e)
        time.sleep(0.25)
    raise KafkaError(f"{name} not ready after {timeout:.0f}s (last probe: {last})\n{diagnostics()}")


def terminate(pid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
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


# --------------------------------------------------------------------------- cluster

# Replicated internal topics, as on a production cluster (a node's own defaults are single-node).
_CLUSTER_CONFIG = {
    "default.replication.factor": 3,
    "offsets.topic.replication.factor": 3,
    "offsets.topic.num.partitions": 3,
    "transaction.state.log.replication.factor": 3,
    "transaction.state.log.min.isr": 2,
    "share.coordinator.state.topic.replication.factor": 3,
    "share.coordinator.state.topic.min.isr": 2,
}


class KafkaCluster(KafkaTools):
    """Several KRaft nodes on 127.0.0.1, each broker and controller (node ids 1..N, a static
    quorum of N voters): partitions have leaders on different brokers, and reassignments move
    them. Each node is a KafkaBroker in ``log_dir/node-<id>``.

    port: the first broker's PLAINTEXT port, the others follow it (0 = free ports).
    Other arguments as KafkaBroker's, for every node.

        with KafkaCluster() as kc:
            kc.create_topic("t", partitions=3)            # replication factor 3
            kc.reassign_partition("t", 0, [3, 1, 2])      # leader now broker 3
            kc.group_offsets("g")[("t", 0)].lag
    """

    def __init__(self, brokers: int = 3, port: int = 0, log_dir: str | os.PathLike | None = None,
                 heap: str = "384m", startup_timeout: float = 120.0,
                 extra_config: dict | None = None, version: str = KAFKA_VERSION,
                 daemon: bool = False, keep_dir: bool | None = None):
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.version = version
        self.size = brokers
        self.default_replication_factor = min(3, brokers)
        self._want_port = port
        self._given_dir = log_dir
        self.log_dir: Path | None = Path(log_dir) if log_dir is not None else None
        self.keep_dir = (log_dir is not None) if keep_dir is None else keep_dir
        rf = self.default_replication_factor
        defaults = {k: min(v, rf) for k, v in _CLUSTER_CONFIG.items()}
        self._node_args = dict(heap=heap, startup_timeout=startup_timeout, version=version,
                               daemon=daemon, keep_dir=True,
                               extra_config={**defaults, **(extra_config or {})})
        self.nodes: list[KafkaBroker] = []
        self.cluster_id: str | None = None

    @property
    def bootstrap(self) -> str:
        if not self.nodes:
            raise KafkaError("cluster not started")
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return next(n for n in self.nodes if n.node_id == node_id)

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "KafkaCluster":
        if self.nodes:
            return self
        return _start_retrying(self, abort=lambda: self._stop_nodes(grace=5))

    def _start_once(self) -> "KafkaCluster":
        if self._given_dir is None:
            self._cleanup_dir()
            self.log_dir = Path(tempfile.mkdtemp(prefix="oke-kafka-cluster-"))
        self.cluster_id = _random_cluster_id()
        self.nodes = [KafkaBroker(port=self._want_port + i if self._want_port else 0,
                                  log_dir=self.log_dir / f"node-{i + 1}", node_id=i + 1,
                                  **self._node_args) for i in range(self.size)]
        for n in self.nodes:
            n._allocate()
            n.cluster_id = self.cluster_id
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for n in self.nodes:
            n.voters = voters
        with ThreadPoolExecutor(self.size) as pool:   # one storage-tool JVM per node, at once
            for f in [pool.submit(n._format) for n in self.nodes]:
                f.result()
        for n in self.nodes:
            n._launch()
        for n in self.nodes:
            n._wait_ready()
        if self._node_args["daemon"]:
            (self.log_dir / "cluster.json").write_text(json.dumps({
                "bootstrap": self.bootstrap, "cluster_id": self.cluster_id,
                "nodes": [n.pid for n in self.nodes], "version": self.version}) + "\n")
        return self

    def _stop_nodes(self, grace: float) -> None:
        nodes, self.nodes = self.nodes, []
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:  # all at once: no quorum to wait on
            list(pool.map(lambda n: n.stop(grace), nodes))

    def _cleanup_dir(self) -> None:
        if not self.keep_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every node at once, SIGKILL after `grace` seconds."""
        was_running = bool(self.nodes)
        self._stop_nodes(grace)
        if was_running:
            self._cleanup_dir()


# --------------------------------------------------------------------------- CLI

def _run_dir(port: int, brokers: int, d: str | None) -> Path:
    name = f"kafka-{port}" if brokers == 1 else f"kafka-{port}-{brokers}brokers"
    return Path(d) if d else cache_dir() / "run" / name


def _node_dirs(run_dir: Path) -> list[Path]:
    """A single broker runs in run_dir itself, a cluster's nodes in run_dir/node-<id>."""
    return [run_dir, *sorted(run_dir.glob("node-*"))]


def daemon_pid(pid_file: Path, *cmdline: str) -> int | None:
    """The pid in pid_file if that process still runs with all of `cmdline` among its arguments."""
    try:
        pid = int(pid_file.read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if all(part.encode() in args for part in cmdline) else None


def _daemon_pid(node_dir: Path) -> int | None:
    """pid of the broker started in node_dir if it still runs."""
    return daemon_pid(node_dir / "kafka.pid", "kafka.Kafka", str(node_dir / "server.properties"))


def _daemons(run_dir: Path) -> dict[Path, int]:
    """node dir -> pid of each broker of run_dir that still runs."""
    return {d: pid for d in _node_dirs(run_dir) if (pid := _daemon_pid(d)) is not None}


def _stop_daemons(run_dir: Path) -> list[int]:
    running = _daemons(run_dir)
    with ThreadPoolExecutor(max(1, len(running))) as pool:
        list(pool.map(lambda pid: terminate(pid, grace=30), running.values()))
    for d in running:
        with contextlib.suppress(FileNotFoundError):
            (d / "kafka.pid").unlink()
    return sorted(running.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.testbed.kafka",
                                 description="Kafka test broker (or cluster) on 127.0.0.1")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("jars", help="fetch the Kafka jars (idempotent); print the libs dir")
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, default=9092,
                       help="the (first) broker's port; a cluster's others follow it")
        p.add_argument("--dir", default=None,
                       help="run directory (default $OKE_CACHE/run/kafka-PORT[-NBROKERSbrokers])")
        if name == "up":
            p.add_argument("--brokers", type=int, default=1,
                           help="1: a single node; more: a KRaft cluster of that many nodes")
            p.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "jars":
            print(ensure_kafka_jars(quiet=False))
            return 0
        if args.cmd in ("status", "down"):   # whatever was started at this port
            run_dirs = ([Path(args.dir)] if args.dir else
                        [_run_dir(args.port, 1, None),
                         *sorted((cache_dir() / "run").glob(f"kafka-{args.port}-*brokers"))])
            found = {d: _daemons(d) for d in run_dirs}
            found = {d: pids for d, pids in found.items() if pids}
            if not found:
                print(f"kafka: not running ({' '.join(map(str, run_dirs))})")
                return 1 if args.cmd == "status" else 0
            if args.cmd == "down":
                for d in found:
                    print(f"kafka: stopped pid {' '.join(map(str, _stop_daemons(d)))} ({d})")
                return 0
            code = 0
            for d, pids in found.items():
                try:
                    api_versions("127.0.0.1", args.port, timeout=3)
                except (OSError, ValueError) as e:
                    print(f"kafka: pid {' '.join(map(str, pids.values()))} running but "
                          f"127.0.0.1:{args.port} does not answer ({e})")
                    code = 1
                    continue
                print(f"kafka: up at 127.0.0.1:{args.port}, {len(pids)} broker(s) "
                      f"(pid {' '.join(map(str, pids.values()))}, {d})")
            return code
        # up
        run_dir = _run_dir(args.port, args.brokers, args.dir)
        running = _daemons(run_dir)
        bootstrap = ",".join(f"127.0.0.1:{args.port + i}" for i in range(args.brokers))
        if len(running) == args.brokers:
            with contextlib.suppress(OSError, ValueError):
                api_versions("127.0.0.1", args.port, timeout=3)
                print(f"kafka: already up at {bootstrap} (pid "
                      f"{' '.join(map(str, running.values()))})")
                print(bootstrap)
                return 0
        if running:
            _stop_daemons(run_dir)  # partly up, or running but deaf: restart
        try:
            api_versions("127.0.0.1", args.port, timeout=2)
        except (OSError, ValueError):
            pass
        else:
            print(f"kafka: port {args.port} already answers Kafka but was not started from "
                  f"{run_dir}; not starting another", file=sys.stderr)
            return 1
        kafka = (KafkaBroker(port=args.port, log_dir=run_dir, daemon=True, keep_dir=True,
                             startup_timeout=args.timeout) if args.brokers == 1 else
                 KafkaCluster(brokers=args.brokers, port=args.port, log_dir=run_dir,
                              daemon=True, keep_dir=True, startup_timeout=args.timeout))
        try:
            kafka.start()
        except BaseException:
            kafka.stop()
            raise
        pids = [kafka.pid] if args.brokers == 1 else [n.pid for n in kafka.nodes]
        print(f"kafka: up at {kafka.bootstrap} (pid {' '.join(map(str, pids))}, {run_dir})",
              file=sys.stderr)
        print(kafka.bootstrap)
        return 0
    except KafkaError as e:
        print(f"kafka: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
