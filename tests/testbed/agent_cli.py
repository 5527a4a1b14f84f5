"""The agent's command line in a child process, as a user runs it: started, ready, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading


class AgentCLI:
    """`otel-kafka-ebpf <command> <args>`; entering waits for the line it prints once attached."""

    def __init__(self, command: str, *args: str, ready: str, env: dict[str, str] | None = None):
        self.command = [sys.executable, "-m", "otel_kafka_ebpf.cli", command, *args]
        self.ready = ready
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.out = self.err = ""
        self._err_lines: list[str] = []
        self._out_chunks: list[str] = []
        self._readers: list[threading.Thread] = []

    def __enter__(self) -> "AgentCLI":
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"{self.command[3]} ended before it was ready:\n" + "".join(self._err_lines)
                                     + self.proc.stderr.read())
            self._err_lines.append(line)
            if self.ready in line:
                break
        # keep reading both pipes so that the agent never blocks on a full one
        for target in (self._read_err, self._read_out):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self._err_lines.append(line)

    def _read_out(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read(1 << 16), ""):
            self._out_chunks.append(chunk)

    @property
    def stderr_so_far(self) -> str:
        return "".join(self._err_lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(10)
        self.out = "".join(self._out_chunks)
        self.err = "".join(self._err_lines)
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        rc = self.stop()
        if exc[0] is None:
            assert rc == 0, self.err
            assert "Traceback" not in self.err, self.err

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    @property
    def pid(self) -> int:
        return self.proc.pid


class TraceCLI(AgentCLI):
    """`otel-kafka-ebpf trace --json` in a child process, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, *args: str):
        super().__init__("trace", "--json", *args, ready="tracing")

    def pairs(self) -> list[dict]:
        return self.json_lines()


def _covered(offset: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= offset <= hi for lo, hi in ranges)


def assert_every_offset_traced(trace: TraceCLI, gt, client: str) -> list[dict]:
    """The workload's pairs, having checked that they hold every offset it produced and consumed."""
    pairs = [p for p in trace.pairs() if p.get("pid") == gt.pid]
    assert pairs, f"no pairs for pid {gt.pid}; stderr: {trace.err}"
    for p in pairs:
        for key in ("api", "version", "client_id", "correlation_id", "request_ns", "server"):
            assert key in p, (key, p)
    produced_ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    fetched_ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for p in pairs:
        for part in p.get("partitions", []):
            key = (part.get("topic"), part.get("partition"))
            if p["api"] == "Produce" and part.get("base_offset", -1) >= 0:
                produced_ranges.setdefault(key, []).append(
                    (part["base_offset"], part["base_offset"] + part["record_count"] - 1))
            elif p["api"] == "Fetch":
                for b in part.get("batches", []):
                    fetched_ranges.setdefault(key, []).append((b["base_offset"], b["last_offset"]))
    missing_produced = [(r.topic, r.partition, r.offset) for r in gt.produced
                        if not _covered(r.offset, produced_ranges.get((r.topic, r.partition), []))]
    missing_consumed = [(r.topic, r.partition, r.offset) for r in gt.consumed
                        if not _covered(r.offset, fetched_ranges.get((r.topic, r.partition), []))]
    assert not missing_produced, f"{client}: {len(missing_produced)} produced offsets not traced, e.g. {missing_produced[:5]}"
    assert not missing_consumed, f"{client}: {len(missing_consumed)} consumed offsets not traced, e.g. {missing_consumed[:5]}"
    return pairs


def assert_right_or_null(pairs: list[dict], records: dict[tuple[str, int, int], set[int]]) -> dict[str, int]:
    """Every offset a Produce or Fetch pair reports is a record that exists, with the timestamp it has: `records`
    maps (topic, partition, offset) -> the timestamps (ms) a record there has had, the truth (what a client was
    acknowledged, or what a consumer read back; more than one where a broker restarted as a new cluster). A value
    the agent did not see is null, which is allowed; a value that is not the truth is not. Returns how many
    produced and fetched batches were checked."""
    topics = {t for t, _, _ in records}
    checked = {"produced": 0, "fetched": 0}
    wrong = []
    for p in pairs:
        for part in p.get("partitions", []):
            topic, partition = part.get("topic"), part.get("partition")
            if topic not in topics:  # a topic id not resolved (null-like), or another test's topic
                continue
            if p["api"] == "Produce" and part.get("base_offset") is not None and part.get("error_code") == 0:
                base, count = part["base_offset"], part.get("record_count") or 1
                if any((topic, partition, o) not in records for o in range(base, base + count)):
                    wrong.append(("produced offsets that do not exist", p))
                elif part.get("first_timestamp") is not None and part["first_timestamp"] not in records[
                        (topic, partition, base)]:
                    wrong.append(("first_timestamp is not the record's", p))
                checked["produced"] += 1
            elif p["api"] == "Fetch":
                for b in part.get("batches", []):
                    if b.get("control"):
                        continue
                    if any((topic, partition, o) not in records for o in range(b["base_offset"], b["last_offset"] + 1)):
                        wrong.append(("fetched a batch of records that do not exist", p))
                    elif b.get("first_timestamp") is not None and (topic, partition, b["base_offset"]) in records and \
                            b["first_timestamp"] not in records[(topic, partition, b["base_offset"])]:
                        wrong.append(("fetched first_timestamp is not the record's", p))
                    checked["fetched"] += 1
    assert not wrong, f"{len(wrong)} wrong values, e.g. {wrong[:3]}"
    return checked
