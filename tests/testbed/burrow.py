"""Burrow (LinkedIn's consumer lag monitor, the Debian package `burrow` 1.2.1) pointed at a test
Kafka, with the ZooKeeper it insists on for its own state (org.apache.zookeeper 3.9.5 from Maven
Central, fetched like the Kafka jars), all on free ports of 127.0.0.1.

    with BurrowStack(cluster.bootstrap) as burrow:     # ZooKeeper + Burrow, generated config
        burrow.consumers()                              # groups Burrow knows
        burrow.lag("my-group")                          # /v3/kafka/<cluster>/consumer/<group>/lag
        burrow.status("my-group")["status"]             # OK, WARN, ERR, STOP, STALL, NOTFOUND
        burrow.log_records()                            # its JSON log, parsed

Burrow 1.2.1 cannot monitor Kafka 4.x: it asks brokers for offsets with ListOffsets v0, which
Kafka 4.0 removed (KIP-896; the broker closes the connection, Burrow logs "failed to fetch offsets
from broker", sarama_error EOF), and it cannot decode the __consumer_offsets records Kafka 4.x
writes (offset commits in value version 4, group metadata in value version 3: "failed to
decode"), so no group ever shows up (NOTFOUND). `python -m tests.testbed.burrow check` shows it.

Command line (from the repository root):

    python -m tests.testbed.burrow jars                      # the ZooKeeper jars (idempotent)
    python -m tests.testbed.burrow up --bootstrap H:P[,...]  # ZooKeeper + Burrow in the background
    python -m tests.testbed.burrow down
    python -m tests.testbed.burrow check [--bootstrap H:P]   # Burrow against Kafka 4.x, what it says
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.testbed.kafka import (KAFKA_VERSION, KafkaError, cache_dir, daemon_pid, ensure_maven_jars,
                                 free_port, reap, spawn, tail_file, terminate, wait_ready)

ZOOKEEPER_VERSION = os.environ.get("OKE_ZOOKEEPER_VERSION", "3.9.5")
ZOOKEEPER_POM = Path(__file__).resolve().parent / "zookeeper" / "pom.xml"
BURROW_BINARY = "/usr/bin/Burrow"  # Debian's package names the binary with a capital B
# The newest Kafka version Burrow 1.2.1 (sarama 1.22) knows; it changes nothing against 4.x.
BURROW_KAFKA_VERSION = "2.0.0"
CLUSTER = "oke"


class BurrowError(KafkaError):
    """ZooKeeper or Burrow could not be provisioned or started."""


def ensure_zookeeper_jars(version: str = ZOOKEEPER_VERSION, quiet: bool = True) -> Path:
    return ensure_maven_jars(ZOOKEEPER_POM, cache_dir() / f"zookeeper-{version}", "zookeeper.version",
                             version, f"zookeeper-{version}.jar", quiet)


def burrow_binary() -> str:
    found = shutil.which("Burrow") or (BURROW_BINARY if os.access(BURROW_BINARY, os.X_OK) else None)
    if not found:
        raise BurrowError("Burrow is not installed (Debian: apt-get install burrow; or `make apt-deps`)")
    return found


def _four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class _Server:
    """A process of the stack: started in `workdir`, output in `out`, stopped with stop()."""

    name = "server"

    def __init__(self, workdir: Path, daemon: bool):
        self.workdir = workdir
        self.daemon = daemon
        self.proc = None

    @property
    def out(self) -> Path:
        return self.workdir / f"{self.name}.out"

    @property
    def pid_file(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def config_path(self) -> Path:
        """The argument that names this server's configuration (tells its process apart)."""
        raise NotImplementedError

    def _spawn(self, argv: list[str]) -> None:
        self.proc = spawn(self, argv, self.out, self.workdir, self.daemon)
        if self.daemon:
            self.pid_file.write_text(f"{self.proc.pid}\n")

    def _wait(self, ready, timeout: float) -> None:
        wait_ready(self.name, self.proc, ready, timeout, lambda: tail_file(self.out))

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        reap(self, proc, grace)


class ZooKeeper(_Server):
    """A standalone ZooKeeper on 127.0.0.1:<free port>, data in workdir/zk-data."""

    name = "zookeeper"

    def __init__(self, workdir: Path, daemon: bool = False, version: str = ZOOKEEPER_VERSION):
        super().__init__(workdir, daemon)
        self.version = version
        self.port: int | None = None

    @property
    def connect(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "zoo.cfg"

    def start(self, timeout: float = 60) -> "ZooKeeper":
        libs = ensure_zookeeper_jars(self.version)
        self.port = free_port()
        data = self.workdir / "zk-data"
        shutil.rmtree(data, ignore_errors=True)
        cfg = self.config_path
        cfg.write_text(f"tickTime=2000\ndataDir={data}\nclientPort={self.port}\n"
                       "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                       "4lw.commands.whitelist=srvr\n")
        self._spawn(["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-cp", f"{libs}/*", "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)])
        # `srvr` answers "not currently serving requests" until the server really runs
        self._wait(lambda: "Mode: standalone" in _four_letter_word(self.port, "srvr"), timeout)
        return self


class Burrow(_Server):
    """Burrow with a generated burrow.toml: one Kafka cluster named CLUSTER (broker offsets and
    the __consumer_offsets consumer on `bootstrap`), in-memory storage, its HTTP API on
    127.0.0.1:<free port>, its JSON log in workdir/burrow.log. The evaluation settings are
    Burrow's defaults: broker offsets every 10 s, a window of 10 commits per partition."""

    name = "burrow"

    def __init__(self, workdir: Path, bootstrap: str, zookeeper: str, daemon: bool = False,
                 kafka_version: str = BURROW_KAFKA_VERSION, offset_refresh_s: int = 10,
                 topic_refresh_s: int = 10, intervals: int = 10):
        super().__init__(workdir, daemon)
        self.bootstrap = bootstrap
        self.zookeeper = zookeeper
        self.kafka_version = kafka_version
        self.offset_refresh_s = offset_refresh_s
        self.topic_refresh_s = topic_refresh_s
        self.intervals = intervals
        self.http_port: int | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "burrow.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> str:
        servers = ", ".join(json.dumps(s) for s in self.bootstrap.split(","))
        return f"""\
[general]
pidfile = "{self.workdir / 'burrow.run.pid'}"

[logging]
filename = "{self.log_file}"
level = "info"

[zookeeper]
servers = ["{self.zookeeper}"]
timeout = 6
root-path = "/burrow"

[client-profile.oke]
client-id = "burrow-oke"
kafka-version = "{self.kafka_version}"

[cluster.{CLUSTER}]
class-name = "kafka"
servers = [{servers}]
client-profile = "oke"
topic-refresh = {self.topic_refresh_s}
offset-refresh = {self.offset_refresh_s}

[consumer.{CLUSTER}]
class-name = "kafka"
cluster = "{CLUSTER}"
servers = [{servers}]
client-profile = "oke"
offsets-topic = "__consumer_offsets"
start-latest = false

[httpserver.default]
address = "127.0.0.1:{self.http_port}"

[storage.default]
class-name = "inmemory"
workers = 4
intervals = {self.intervals}
expire-group = 604800
min-distance = 1

[evaluator.default]
class-name = "caching"
expire-cache = 10
"""

    def start(self, timeout: float = 60) -> "Burrow":
        binary = burrow_binary()
        self.http_port = free_port()
        conf = self.config_path
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "burrow.toml").write_text(self.config())
        for stale in (self.log_file, self.workdir / "burrow.run.pid"):
            stale.unlink(missing_ok=True)
        self._spawn([binary, "--config-dir", str(conf)])
        self._wait(lambda: self._http("/burrow/admin").strip() == "GOOD", timeout)
        return self

    def _http(self, path: str, timeout: float = 5.0) -> str:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as e:   # Burrow answers 404 with a JSON body too
            return e.read().decode()

    def get(self, path: str) -> dict:
        """A JSON answer of Burrow's HTTP API (e.g. "/v3/kafka")."""
        return json.loads(self._http(path))

    def consumers(self) -> list[str]:
        return self.get(f"/v3/kafka/{CLUSTER}/consumer").get("consumers") or []

    def topics(self) -> list[str]:
        return self.get(f"/v3/kafka/{CLUSTER}/topic").get("topics") or []

    def lag(self, group: str) -> dict:
        """The "status" object of /v3/kafka/<cluster>/consumer/<group>/lag: status, partitions
        (each with its status, current_lag, start and end offsets), maxlag, totallag."""
        return self.get(f"/v3/kafka/{CLUSTER}/consumer/{group}/lag").get("status") or {}

    def status(self, group: str) -> dict:
        """/v3/kafka/<cluster>/consumer/<group>/status: the group's status, bad partitions only."""
        return self.get(f"/v3/kafka/{CLUSTER}/consumer/{group}/status").get("status") or {}

    def log_records(self) -> list[dict]:
        """Burrow's JSON log lines, parsed (lines that are not JSON are left out)."""
        out = []
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


class BurrowStack:
    """ZooKeeper + Burrow pointed at `bootstrap`, in `workdir` (a fresh temp dir if None)."""

    def __init__(self, bootstrap: str, workdir: str | os.PathLike | None = None,
                 daemon: bool = False, **burrow_args):
        self.bootstrap = bootstrap
        self._given_dir = workdir
        self.workdir = Path(workdir) if workdir else None
        self.daemon = daemon
        self.burrow_args = burrow_args
        self.zookeeper: ZooKeeper | None = None
        self.burrow: Burrow | None = None

    def start(self) -> Burrow:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="oke-burrow-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.zookeeper = ZooKeeper(self.workdir, self.daemon).start()
            self.burrow = Burrow(self.workdir, self.bootstrap, self.zookeeper.connect, self.daemon,
                                 **self.burrow_args).start()
        except BaseException:
            self.stop()
            raise
        return self.burrow

    def stop(self) -> None:
        for server in (self.burrow, self.zookeeper):
            if server is not None:
                server.stop()
        if self._given_dir is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Burrow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- what Burrow says

# The log messages that show Burrow 1.2.1 cannot read Kafka 4.x (see the module doc).
INCOMPATIBLE = {
    "broker offsets": "failed to fetch offsets from broker",
    "__consumer_offsets": "failed to decode",
}


def evidence(burrow: Burrow, group: str, broker_logs: list[Path] = ()) -> dict:
    """What Burrow says about `group`, and why: its HTTP answers, each distinct warning/error of
    its log (with a count and one example), and the brokers' own complaint about its requests."""
    problems: dict[str, dict] = {}
    for rec in burrow.log_records():
        if rec.get("level") not in ("warn", "error"):
            continue
        key = " | ".join(f"{k}={rec[k]}" for k in ("msg", "sarama_error", "message_type", "reason",
                                                     "version") if k in rec)
        entry = problems.setdefault(key, {"count": 0, "example": rec})
        entry["count"] += 1
    broker_lines: dict[str, int] = {}
    for log in broker_logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if "UnsupportedVersionException" in line and "Received request" in line:
                msg = line[line.index("Received request"):]
                broker_lines[msg] = broker_lines.get(msg, 0) + 1
    return {
        "burrow": "1.2.1 (Debian package)", "kafka": KAFKA_VERSION, "group": group,
        "http": {
            f"/v3/kafka/{CLUSTER}/consumer": burrow.consumers(),
            f"/v3/kafka/{CLUSTER}/topic": burrow.topics(),
            f"/v3/kafka/{CLUSTER}/consumer/{group}/lag": burrow.lag(group),
            f"/v3/kafka/{CLUSTER}/consumer/{group}/status": burrow.status(group),
        },
        "log": problems,
        "broker_log": broker_lines,
    }


def sees_group(burrow: Burrow, group: str) -> bool:
    return group in burrow.consumers() and burrow.status(group).get("status") not in (None, "NOTFOUND")


def cannot_read_kafka(ev: dict) -> list[str]:
    """The known reasons (INCOMPATIBLE) found in evidence(): why Burrow sees no lag."""
    return [what for what, msg in INCOMPATIBLE.items() if any(k.startswith(f"msg={msg}") for k in ev["log"])]


def format_evidence(ev: dict) -> str:
    lines = [f"Burrow {ev['burrow']} against Kafka {ev['kafka']}, group {ev['group']!r}:"]
    for path, answer in ev["http"].items():
        lines.append(f"  GET {path} -> {json.dumps(answer, sort_keys=True)}")
    for key, entry in ev["log"].items():
        lines.append(f"  log x{entry['count']}: {key}")
        lines.append(f"      e.g. {json.dumps(entry['example'], sort_keys=True)}")
    for msg, n in ev["broker_log"].items():
        lines.append(f"  broker log x{n}: {msg}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def _run_dir(d: str | None) -> Path:
    return Path(d) if d else cache_dir() / "run" / "burrow"


def _check(bootstrap: str | None, wait_s: float) -> int:
    """Burrow against a 3-broker cluster (its own, or `bootstrap`) with one consumer group."""
    from tests.testbed.kafka import ExternalKafka, KafkaCluster
    from tests.workloads import start_workload

    cluster = ExternalKafka(bootstrap).start() if bootstrap else KafkaCluster().start()
    work = Path(tempfile.mkdtemp(prefix="oke-burrow-check-"))
    try:
        topic = cluster.create_topic(f"burrow-check-{os.getpid()}", partitions=3)
        group = f"{topic}-group"
        with BurrowStack(cluster.bootstrap, work / "burrow") as burrow, \
                start_workload("go", cluster.bootstrap, topic, work / "p.jsonl", mode="produce",
                               messages=int(wait_s * 50), rate=50, partitions=3, timeout_s=wait_s + 30), \
                start_workload("go", cluster.bootstrap, topic, work / "c.jsonl", mode="consume",
                               messages=int(wait_s * 50), group=group, partitions=3,
                               timeout_s=wait_s + 30):
            print(f"burrow: watching group {group} on {cluster.bootstrap} for {wait_s:.0f}s ...",
                  file=sys.stderr)
            time.sleep(wait_s)
            logs = [n.log_file for n in getattr(cluster, "nodes", [])]
            ev = evidence(burrow, group, logs)
            seen = sees_group(burrow, group)
        print(format_evidence(ev))
        print(f"Kafka's own view (kafka-consumer-groups): {cluster.group_offsets(group)}")
        if seen:
            print("verdict: Burrow sees the group")
        else:
            print(f"verdict: Burrow cannot monitor Kafka {KAFKA_VERSION}: "
                  f"{', '.join(cannot_read_kafka(ev)) or 'group not found'} unreadable")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.testbed.burrow",
                                 description="Burrow + ZooKeeper on 127.0.0.1 for a test Kafka")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("jars", help="fetch the ZooKeeper jars (idempotent); print the libs dir")
    up = sub.add_parser("up", help="start ZooKeeper and Burrow in the background")
    up.add_argument("--bootstrap", required=True)
    down = sub.add_parser("down")
    down.set_defaults(bootstrap=None)
    for p in (up, down):
        p.add_argument("--dir", default=None, help="run directory (default $OKE_CACHE/run/burrow)")
    check = sub.add_parser("check", help="what Burrow says about a consumer group on Kafka 4.x")
    check.add_argument("--bootstrap", default=None, help="a running cluster (default: start one)")
    check.add_argument("--wait", type=float, default=40, help="seconds Burrow gets to see the group")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "jars":
            print(ensure_zookeeper_jars(quiet=False))
            return 0
        if args.cmd == "check":
            return _check(args.bootstrap, args.wait)
        run_dir = _run_dir(args.dir)
        servers = (Burrow(run_dir, args.bootstrap or "", ""), ZooKeeper(run_dir))
        running = {s.name: pid for s in servers
                   if (pid := daemon_pid(s.pid_file, str(s.config_path))) is not None}
        for pid in running.values():   # down, or up again: stop what runs
            terminate(pid, grace=10)
        if args.cmd == "down":
            print(f"burrow: stopped {running or 'nothing'} ({run_dir})")
            return 0
        stack = BurrowStack(args.bootstrap, run_dir, daemon=True)
        burrow = stack.start()
        print(f"burrow: up, HTTP API at {burrow.url}, ZooKeeper at {stack.zookeeper.connect}, "
              f"log {burrow.log_file}", file=sys.stderr)
        print(burrow.url)
        return 0
    except KafkaError as e:
        print(f"burrow: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
