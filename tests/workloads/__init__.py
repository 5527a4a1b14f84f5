"""Client workloads: run them, read their ground truth, check it.

Every workload (see CONTRACT.md beside this file) takes the same command line and writes the
same JSON-lines ground truth, so tests treat the four clients alike:

    gt = run_workload("go", broker.bootstrap, topic, tmp_path / "go.jsonl",
                      messages=200, partitions=3, compression="zstd")
    gt.check_consistent()
    assert len(gt.produced) == 200

Options are the contract's long options with ``_`` for ``-`` (``group_protocol="consumer"``,
``linger_ms=0``); ``True`` gives a bare flag (``transactional=True``), ``False``/``None`` omit it.

This module also holds the pieces the two Python workloads share (argument parser, ground-truth
writer, record values), so both follow the contract the same way. It imports only the standard
library.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

CLIENTS = ("java", "go", "confluent", "kafkapython")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GO_DIR = HERE / "go"
GO_BINARY = GO_DIR / "workload"
JAVA_DIR = HERE / "java"
JAVA_JAR = JAVA_DIR / "target" / "workload.jar"
JAVA_LAUNCHER = JAVA_DIR / "run.sh"
PYTHON_SCRIPTS = {
    "confluent": HERE / "confluent_workload.py",
    "kafkapython": HERE / "kafkapython_workload.py",
}

# Exit codes of the contract.
EXIT_OK, EXIT_ERROR, EXIT_TIMEOUT, EXIT_UNSUPPORTED = 0, 1, 2, 3

# Extra wall time the runner allows beyond --timeout-s (process start, JVM warm-up, teardown).
RUNNER_GRACE_S = 45.0
DEFAULT_TIMEOUT_S = 60.0
MAX_AGE_NS = 5 * 60 * 1_000_000_000   # "within 5 minutes of now"
CLOCK_SKEW_NS = 2 * 1_000_000_000     # allowance for events stamped "in the future"


class WorkloadError(RuntimeError):
    """A workload failed (exit 1 or 2, killed, or bad/missing ground truth)."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class Unsupported(WorkloadError):
    """The client does not support a requested option (contract exit code 3)."""


class GroundTruthError(AssertionError):
    """The ground truth is incomplete or inconsistent; the message lists every problem."""


# --------------------------------------------------------------------------- command lines

def _option_args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def java_command() -> list[str]:
    """How to start the Java workload: its launcher script if there is one, else the jar."""
    if JAVA_LAUNCHER.is_file():
        return ["bash", str(JAVA_LAUNCHER)]
    return ["java", "-jar", str(JAVA_JAR)]


def command(client: str, **options: Any) -> list[str]:
    """The command line that runs ``client``'s workload with the given contract options."""
    if client == "java":
        base = java_command()
    elif client == "go":
        base = [str(GO_BINARY)]
    elif client in PYTHON_SCRIPTS:
        base = [sys.executable, str(PYTHON_SCRIPTS[client])]
    else:
        raise ValueError(f"unknown client {client!r}; expected one of {CLIENTS}")
    return base + _option_args(options)


def missing_build(client: str) -> str | None:
    """Why ``client``'s workload cannot run yet (not built), or None."""
    if client == "go" and not os.access(GO_BINARY, os.X_OK):
        return f"{GO_BINARY} is not built (run `make workloads`)"
    if client == "java" and not JAVA_LAUNCHER.is_file() and not JAVA_JAR.is_file():
        return f"neither {JAVA_LAUNCHER} nor {JAVA_JAR} exists (run `make workloads`)"
    if client == "java" and shutil.which("java") is None and not JAVA_LAUNCHER.is_file():
        return "no `java` on PATH"
    return None


# --------------------------------------------------------------------------- running

def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Workload:
    """A started workload process; ``wait()`` returns its GroundTruth."""

    def __init__(self, client: str, bootstrap: str, topic: str, out_path: str | os.PathLike,
                 env: dict[str, str] | None = None, preexec_fn=None, **options: Any):
        self.client = client
        self.out_path = Path(out_path)
        self.options = {"bootstrap": bootstrap, "topic": topic, **options}
        self.timeout_s = float(options.get("timeout_s") or DEFAULT_TIMEOUT_S)
        why = missing_build(client)
        if why:
            raise WorkloadError(f"{client} workload cannot run: {why}")
        self.argv = command(client, bootstrap=bootstrap, topic=topic, out=self.out_path, **options)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        if self.out_path.exists():
            self.out_path.unlink()
        self._stderr_path = self.out_path.with_name(self.out_path.name + ".stderr")
        self._stderr = open(self._stderr_path, "w+b")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True, preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _output(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def wait(self, timeout: float | None = None) -> "GroundTruth":
        """Wait for the process (default: its --timeout-s plus a grace period) and parse the
        ground truth. Raises Unsupported on exit 3 and WorkloadError on any other failure."""
        limit = self.timeout_s + RUNNER_GRACE_S if timeout is None else timeout
        try:
            rc = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkloadError(
                f"{self.client} workload still running after {limit:.0f}s, killed\n"
                f"command: {' '.join(self.argv)}\noutput:\n{_tail(self._output())}") from None
        finally:
            if self.proc.poll() is None:
                self.kill()
        output = self._output()
        self._stderr.close()
        if rc == EXIT_UNSUPPORTED:
            raise Unsupported(f"{self.client}: {output.strip() or 'unsupported option'}",
                              rc, output)
        if rc != EXIT_OK:
            what = {EXIT_TIMEOUT: "timed out / incomplete"}.get(rc, "failed")
            raise WorkloadError(
                f"{self.client} workload {what} (exit {rc})\n"
                f"command: {' '.join(self.argv)}\noutput:\n{_tail(output)}", rc, output)
        try:
            gt = GroundTruth.load(self.out_path)
        except (OSError, ValueError) as e:
            raise WorkloadError(f"{self.client} workload exited 0 but its ground truth "
                                f"{self.out_path} is unusable: {e}", rc, output) from e
        gt.options = dict(self.options)
        gt.stderr = output
        gt.process_pid = self.proc.pid
        return gt

    def __enter__(self) -> "Workload":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        if not self._stderr.closed:
            self._stderr.close()


def start_workload(client: str, bootstrap: str, topic: str, out_path: str | os.PathLike,
                   **options: Any) -> Workload:
    """Start a workload in the background (e.g. to trace it while it runs)."""
    return Workload(client, bootstrap, topic, out_path, **options)


def run_workload(client: str, bootstrap: str, topic: str, out_path: str | os.PathLike,
                 **options: Any) -> "GroundTruth":
    """Run a workload to completion and return its parsed ground truth.

    Raises Unsupported (exit 3) when the client lacks an option, WorkloadError otherwise."""
    with Workload(client, bootstrap, topic, out_path, **options) as w:
        return w.wait()


# --------------------------------------------------------------------------- ground truth

@dataclass(frozen=True)
class Produced:
    client_id: str
    topic: str
    partition: int
    offset: int | None
    timestamp_ms: int
    send_ns: int
    ack_ns: int
    key: str
    value_size: int
    traceparent: str | None = None


@dataclass(frozen=True)
class Consumed:
    client_id: str
    group: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    consume_ns: int
    key: str
    traceparent: str | None = None


_REQUIRED = {
    "start": ("client", "pid", "client_id", "version", "time_ns"),
    "produce": ("client", "pid", "client_id", "topic", "partition", "offset", "timestamp_ms",
                "send_ns", "ack_ns", "key", "value_size"),
    "consume": ("client", "pid", "client_id", "group", "topic", "partition", "offset",
                "timestamp_ms", "consume_ns", "key"),
    "done": ("client", "pid", "produced", "consumed", "time_ns"),
}


@dataclass
class GroundTruth:
    """A workload's ground truth as parsed from its JSON lines."""

    client: str
    pid: int
    client_id: str
    version: str
    start_ns: int
    done_ns: int | None
    done_produced: int | None
    done_consumed: int | None
    produced: list[Produced] = field(default_factory=list)
    consumed: list[Consumed] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)   # set by the runner
    stderr: str = ""                                         # set by the runner
    process_pid: int | None = None                           # set by the runner

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GroundTruth":
        return cls.parse(Path(path).read_text(encoding="utf-8").splitlines())

    @classmethod
    def parse(cls, lines: Iterable[str]) -> "GroundTruth":
        events: list[dict] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {n}: not JSON: {e}: {line[:200]!r}") from None
            if not isinstance(ev, dict) or ev.get("event") not in _REQUIRED:
                raise ValueError(f"line {n}: not a known event: {line[:200]!r}")
            missing = [k for k in _REQUIRED[ev["event"]] if k not in ev]
            if missing:
                raise ValueError(f"line {n}: {ev['event']} event lacks {missing}")
            events.append(ev)
        starts = [e for e in events if e["event"] == "start"]
        dones = [e for e in events if e["event"] == "done"]
        if len(starts) != 1:
            raise ValueError(f"expected exactly one start event, found {len(starts)}")
        if len(dones) > 1:
            raise ValueError(f"expected at most one done event, found {len(dones)}")
        start = starts[0]
        done = dones[0] if dones else None
        gt = cls(client=start["client"], pid=start["pid"], client_id=start["client_id"],
                 version=str(start["version"]), start_ns=start["time_ns"],
                 done_ns=done["time_ns"] if done else None,
                 done_produced=done["produced"] if done else None,
                 done_consumed=done["consumed"] if done else None, events=events)
        for e in events:
            if e["event"] == "produce":
                gt.produced.append(Produced(
                    client_id=e["client_id"], topic=e["topic"], partition=e["partition"],
                    offset=e["offset"], timestamp_ms=e["timestamp_ms"], send_ns=e["send_ns"],
                    ack_ns=e["ack_ns"], key=e["key"], value_size=e["value_size"],
                    traceparent=e.get("traceparent")))
            elif e["event"] == "consume":
                gt.consumed.append(Consumed(
                    client_id=e["client_id"], group=e["group"], topic=e["topic"],
                    partition=e["partition"], offset=e["offset"],
                    timestamp_ms=e["timestamp_ms"], consume_ns=e["consume_ns"], key=e["key"],
                    traceparent=e.get("traceparent")))
        return gt

    # -- views
    @property
    def client_ids(self) -> set[str]:
        return ({self.client_id} | {p.client_id for p in self.produced}
                | {c.client_id for c in self.consumed})

    @property
    def producer_client_id(self) -> str | None:
        ids = {p.client_id for p in self.produced}
        return ids.pop() if len(ids) == 1 else None

    @property
    def consumer_client_id(self) -> str | None:
        ids = {c.client_id for c in self.consumed}
        return ids.pop() if len(ids) == 1 else None

    @property
    def groups(self) -> set[str]:
        return {c.group for c in self.consumed}

    def produced_offsets(self) -> dict[tuple[str, int], list[int]]:
        """(topic, partition) -> sorted produced offsets (acks=0 runs have none)."""
        out: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
        for p in self.produced:
            if p.offset is not None:
                out[(p.topic, p.partition)].append(p.offset)
        return {k: sorted(v) for k, v in out.items()}

    def consumed_offsets(self) -> dict[tuple[str, int], list[int]]:
        """(topic, partition) -> sorted consumed offsets."""
        out: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
        for c in self.consumed:
            out[(c.topic, c.partition)].append(c.offset)
        return {k: sorted(v) for k, v in out.items()}

    # -- checks
    def check_consistent(self, now_ns: int | None = None,
                         expected_messages: int | None = None) -> "GroundTruth":
        """Raise GroundTruthError listing every inconsistency; return self if there is none.

        Checks: a done event whose counts match the records; produced offsets unique and
        contiguous per partition; consumed offsets unique, contiguous and in order per
        partition; when the run both produced and consumed, every produced record consumed
        exactly once, with the same key and timestamp, and consume_ns >= ack_ns; send_ns <=
        ack_ns; every time within 5 minutes of now and between start and done; counts equal
        ``expected_messages`` (default: the run's --messages, when this came from the runner).
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        problems: list[str] = []

        def problem(msg: str) -> None:
            if len(problems) < 50:
                problems.append(msg)

        mode = self.options.get("mode", "both")
        if expected_messages is None and "messages" in self.options:
            expected_messages = int(self.options["messages"])
        if expected_messages is None and self.options:
            expected_messages = 100   # the contract's default

        # identity and done
        for e in self.events:
            if e["pid"] != self.pid or e["client"] != self.client:
                problem(f"{e['event']} event of pid {e['pid']}/{e['client']!r}, "
                        f"start said {self.pid}/{self.client!r}")
                break
        if self.events and self.events[0]["event"] != "start":
            problem("first event is not start")
        if self.done_ns is None:
            problem("no done event")
        else:
            if self.events[-1]["event"] != "done":
                problem("last event is not done")
            if self.done_produced != len(self.produced):
                problem(f"done says produced={self.done_produced}, "
                        f"found {len(self.produced)} produce events")
            if self.done_consumed != len(self.consumed):
                problem(f"done says consumed={self.done_consumed}, "
                        f"found {len(self.consumed)} consume events")
        if expected_messages is not None:
            if mode in ("both", "produce") and len(self.produced) != expected_messages:
                problem(f"produced {len(self.produced)} records, expected {expected_messages}")
            if mode in ("both", "consume") and len(self.consumed) != expected_messages:
                problem(f"consumed {len(self.consumed)} records, expected {expected_messages}")
        if "topic" in self.options:
            topics = {p.topic for p in self.produced} | {c.topic for c in self.consumed}
            if topics - {self.options["topic"]}:
                problem(f"records of other topics: {sorted(topics - {self.options['topic']})}")

        # times
        end_ns = self.done_ns if self.done_ns is not None else now_ns

        def check_time(what: str, ns: int) -> None:
            if not isinstance(ns, int):
                problem(f"{what} is not an integer: {ns!r}")
            elif not now_ns - MAX_AGE_NS <= ns <= now_ns + CLOCK_SKEW_NS:
                problem(f"{what}={ns} is not within 5 minutes of now ({now_ns})")
            elif not self.start_ns <= ns <= end_ns:
                problem(f"{what}={ns} is outside the run [{self.start_ns}, {end_ns}]")

        check_time("start time_ns", self.start_ns)
        if self.done_ns is not None and self.done_ns < self.start_ns:
            problem("done time_ns before start time_ns")
        for p in self.produced:
            check_time(f"produce {p.key} send_ns", p.send_ns)
            check_time(f"produce {p.key} ack_ns", p.ack_ns)
            if p.ack_ns < p.send_ns:
                problem(f"produce {p.key}: ack_ns {p.ack_ns} < send_ns {p.send_ns}")
            if abs(p.timestamp_ms * 1_000_000 - p.send_ns) > MAX_AGE_NS:
                problem(f"produce {p.key}: timestamp_ms {p.timestamp_ms} is far from send_ns")
        for c in self.consumed:
            check_time(f"consume {c.key} consume_ns", c.consume_ns)
            if not now_ns - MAX_AGE_NS <= c.timestamp_ms * 1_000_000 <= now_ns + CLOCK_SKEW_NS:
                problem(f"consume {c.key}: timestamp_ms {c.timestamp_ms} not within 5 minutes")

        # produced offsets
        with_offset = [p for p in self.produced if p.offset is not None]
        if with_offset and len(with_offset) != len(self.produced):
            problem(f"{len(self.produced) - len(with_offset)} of {len(self.produced)} "
                    "produce events lack an offset")
        if self.options.get("acks") in (0, "0") and with_offset:
            problem("acks=0 run reports produce offsets")
        self._check_offsets("produced", self.produced_offsets(), problem)
        keys = collections.Counter(p.key for p in self.produced)
        dup_keys = [k for k, n in keys.items() if n > 1]
        if dup_keys:
            problem(f"produced keys repeated: {dup_keys[:10]}")

        # consumed offsets: unique, contiguous, in order per partition
        self._check_offsets("consumed", self.consumed_offsets(), problem)
        last: dict[tuple[str, int], int] = {}
        for c in self.consumed:
            tp = (c.topic, c.partition)
            if tp in last and c.offset <= last[tp]:
                problem(f"consumed {tp} offset {c.offset} after {last[tp]} (out of order)")
            last[tp] = c.offset

        # produced vs consumed
        if self.produced and self.consumed:
            if with_offset:
                by_pos = {(p.topic, p.partition, p.offset): p for p in self.produced}
                con_pos = {(c.topic, c.partition, c.offset): c for c in self.consumed}
                never = sorted(set(by_pos) - set(con_pos))
                extra = sorted(set(con_pos) - set(by_pos))
                if never:
                    problem(f"{len(never)} produced records never consumed, e.g. {never[:5]}")
                if extra:
                    problem(f"{len(extra)} consumed records were not produced by this run, "
                            f"e.g. {extra[:5]}")
                pairs = [(by_pos[k], con_pos[k]) for k in set(by_pos) & set(con_pos)]
            else:   # acks=0: no offsets, match by key (unique within a run)
                by_key = {p.key: p for p in self.produced}
                con_keys = collections.Counter(c.key for c in self.consumed)
                never = sorted(set(by_key) - set(con_keys))
                extra = sorted(set(con_keys) - set(by_key))
                if never:
                    problem(f"{len(never)} produced keys never consumed, e.g. {never[:5]}")
                if extra:
                    problem(f"{len(extra)} consumed keys not produced, e.g. {extra[:5]}")
                pairs = [(by_key[c.key], c) for c in self.consumed if c.key in by_key]
            for p, c in sorted(pairs, key=lambda pc: pc[1].consume_ns):
                if p.key != c.key:
                    problem(f"{c.topic}[{c.partition}]@{c.offset}: produced key {p.key!r}, "
                            f"consumed key {c.key!r}")
                if p.timestamp_ms != c.timestamp_ms:
                    problem(f"{c.key}: produced timestamp_ms {p.timestamp_ms}, consumed "
                            f"{c.timestamp_ms}")
                if c.consume_ns < p.ack_ns:
                    problem(f"{c.key}: consume_ns {c.consume_ns} < ack_ns {p.ack_ns}")
                if p.traceparent != c.traceparent:
                    problem(f"{c.key}: produced traceparent {p.traceparent!r}, consumed "
                            f"{c.traceparent!r}")
        if problems:
            raise GroundTruthError(f"{self.client} ground truth (pid {self.pid}) is "
                                   "inconsistent:\n  " + "\n  ".join(problems))
        return self

    @staticmethod
    def _check_offsets(what: str, offsets: dict[tuple[str, int], list[int]], problem) -> None:
        for tp, offs in sorted(offsets.items()):
            dups = sorted(o for o, n in collections.Counter(offs).items() if n > 1)
            if dups:
                problem(f"{what} {tp[0]}[{tp[1]}]: offsets seen more than once: {dups[:10]}")
            uniq = sorted(set(offs))
            if uniq and uniq[-1] - uniq[0] + 1 != len(uniq):
                holes = sorted(set(range(uniq[0], uniq[-1] + 1)) - set(uniq))
                problem(f"{what} {tp[0]}[{tp[1]}]: offsets not contiguous, missing {holes[:10]}")


# --------------------------------------------------------------------------- shared by the
# Python workloads (confluent_workload.py, kafkapython_workload.py)

class UsageError(Exception):
    """Bad command line (exit 1)."""


class UnsupportedOption(Exception):
    """Option this client lacks (exit 3)."""


class TimedOut(Exception):
    """Gave up after --timeout-s (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 1, as the contract says, not argparse's 2
        raise UsageError(message)


def contract_parser(client: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{client}-workload", description=f"{client} Kafka client workload")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--compression", choices=CODECS, default="none")
    p.add_argument("--acks", choices=("0", "1", "all", "-1"), default="all")
    p.add_argument("--linger-ms", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--mode", choices=("produce", "consume", "both"), default="both")
    p.add_argument("--group")
    p.add_argument("--group-protocol", choices=("classic", "consumer"), default="classic")
    p.add_argument("--client-id", default=f"okw-{client}")
    p.add_argument("--transactional", action="store_true")
    p.add_argument("--headers", action="store_true")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--out", required=True)
    p.add_argument("--process-ms", type=float, default=0)
    p.add_argument("--hang-after", type=int, default=-1)
    p.add_argument("--process-after", type=int, default=0)
    p.add_argument("--process-until", type=int, default=-1)
    p.add_argument("--hang-s", type=float, default=0)
    p.add_argument("--fetch-max-bytes", type=int, default=0)
    p.add_argument("--max-partition-fetch-bytes", type=int, default=0)
    p.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, default="PLAINTEXT")
    p.add_argument("--ca-file")
    p.add_argument("--sasl-user")
    p.add_argument("--sasl-password", default="")
    return p


def parse_contract_args(client: str, argv: list[str] | None = None) -> argparse.Namespace:
    a = contract_parser(client).parse_args(argv)
    if a.acks == "-1":
        a.acks = "all"
    for name in ("partitions", "batch_size"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("messages", "size", "rate", "linger_ms", "fetch_max_bytes", "max_partition_fetch_bytes"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if a.timeout_s <= 0:
        raise UsageError("--timeout-s must be > 0")
    if a.security_protocol.startswith("SASL_") and not a.sasl_user:
        raise UsageError(f"--security-protocol {a.security_protocol} needs --sasl-user")
    if a.group is None:
        a.group = f"{a.topic}-group"
    a.deadline = time.monotonic() + a.timeout_s
    return a


def record_value(seq: int, size: int) -> bytes:
    """The deterministic value of record ``seq``: lowercase letters shifted by seq."""
    return bytes(97 + (seq + i) % 26 for i in range(size))


def new_traceparent() -> str:
    trace_id = os.urandom(16).hex()
    span_id = os.urandom(8).hex()
    # never the invalid all-zero ids
    trace_id = "1" + trace_id[1:] if int(trace_id, 16) == 0 else trace_id
    span_id = "1" + span_id[1:] if int(span_id, 16) == 0 else span_id
    return f"00-{trace_id}-{span_id}-01"


class TruthWriter:
    """Writes ground-truth events as JSON lines; safe to call from client callback threads."""

    def __init__(self, path: str | os.PathLike, client: str):
        self.client = client
        self.pid = os.getpid()
        self._f = open(path, "w", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "client": self.client, "pid": self.pid, **fields},
                          separators=(",", ":"))
        with self._lock:
            self._f.write(line + "\n")

    def consumed(self, *, key: bytes | None, headers, **fields: Any) -> None:
        """A consume event: the record's key as text, and its traceparent header if it has one."""
        fields["key"] = (key or b"").decode("utf-8", "replace")
        for name, value in headers or ():
            if name == "traceparent":
                fields["traceparent"] = value.decode("utf-8", "replace")
        self.write("consume", **fields)

    def close(self) -> None:
        with self._lock:
            self._f.close()


def run_modes(args: argparse.Namespace, truth, counts, prepare_topic, produce, consume) -> None:
    """The contract's --mode for a Python workload: produce, consume, or produce then consume what was produced.

    The topic is created if missing in every mode (a consumer may start before its producer);
    `prepare_topic` returns each partition's end offset before producing."""
    start = prepare_topic(args)
    if args.mode != "consume":
        produce(args, truth, counts)
    if args.mode == "both":
        consume(args, truth, counts, counts["produced"], start)
    elif args.mode == "consume":
        consume(args, truth, counts, args.messages, None)


def workload_main(client: str, version: str, work) -> int:
    """Run ``work(args, truth) -> (produced, consumed)`` under the contract: start and done
    events, exit codes, one line on stderr on failure."""
    try:
        args = parse_contract_args(client)
    except UsageError as e:
        print(f"{client} workload: {e}", file=sys.stderr)
        return EXIT_ERROR
    truth = TruthWriter(args.out, client)
    truth.write("start", client_id=args.client_id, version=version, time_ns=time.time_ns())
    counts = {"produced": 0, "consumed": 0}
    code = EXIT_OK
    try:
        work(args, truth, counts)
    except UnsupportedOption as e:
        print(f"{client} workload: unsupported: {e}", file=sys.stderr)
        code = EXIT_UNSUPPORTED
    except TimedOut as e:
        print(f"{client} workload: timed out after {args.timeout_s:g}s: {e}", file=sys.stderr)
        code = EXIT_TIMEOUT
    except Exception as e:  # noqa: BLE001 - any other failure is exit 1 with one line
        print(f"{client} workload: {type(e).__name__}: {e}", file=sys.stderr)
        code = EXIT_ERROR
    truth.write("done", produced=counts["produced"], consumed=counts["consumed"],
                time_ns=time.time_ns())
    truth.close()
    return code


def handle(args: argparse.Namespace, consumed: int) -> None:
    """The application's own work per record: --process-ms each (from the record after --process-after to
    --process-until), and once --hang-after records a hang of
    --hang-s seconds (0: until killed), the poll loop blocked in the handler."""
    if args.process_ms > 0 and consumed > args.process_after and (
            args.process_until < 0 or consumed <= args.process_until):
        time.sleep(args.process_ms / 1000)
    if consumed == args.hang_after:
        if args.hang_s > 0:
            time.sleep(args.hang_s)
        else:
            while True:
                time.sleep(3600)


def remaining(args: argparse.Namespace) -> float:
    """Seconds left before --timeout-s; raises TimedOut when none are."""
    left = args.deadline - time.monotonic()
    if left <= 0:
        raise TimedOut("deadline passed")
    return left


def pace(args: argparse.Namespace, began: float, seq: int) -> None:
    """Sleep until record ``seq`` is due under --rate."""
    if args.rate > 0:
        delay = began + seq / args.rate - time.monotonic()
        if delay > 0:
            if delay > remaining(args):
                raise TimedOut(f"--rate {args.rate:g} cannot fit in --timeout-s")
            time.sleep(delay)
