"""`otel-kafka-ebpf run` beside a producer at a sustained rate, exporting OTLP/gRPC to a Collector that
writes what it receives to files: how many send spans arrived, what the agent said about its own health
(decoder problems, lost events, gaps), whether it was alive at the end, and what it cost.

    with KafkaBroker() as kb, Collector("file-only.yaml") as col:
        result = run_load(kb, col, records=150_000, throughput=10_000, ringbuf_mb=16)
        result.send_spans, result.decoder_problems, result.agent_alive

Command line (issue 14's verification: ProducerPerformance, batch.size=1, 150,000 records, 10 runs):

    python -m tests.testbed.run_load --runs 10 --records 150000 --throughput 10000 [--ringbuf-mb 16]
        [--record-dir DIR]   keep each run's recording (replay it with `otel-kafka-ebpf replay`)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.testbed.agent_cli import AgentCLI
from tests.testbed.backends import BackendError, Collector, wait_until
from tests.testbed.kafka import KafkaBroker, KafkaTools

TICKS = os.sysconf("SC_CLK_TCK")
_CAPTURED = re.compile(r"captured (?P<bytes>\d+) bytes in (?P<events>\d+) events .*?lost (?P<lost_events>\d+) "
                       r"events to a full ring buffer; (?P<gaps>\d+) gaps \((?P<gap_bytes>\d+) bytes")


@dataclass
class LoadResult:
    records: int                      # records ProducerPerformance sent (one batch and one request each)
    producer_seconds: float
    requests_per_s: float
    send_spans: int                   # spans `send <topic>` the Collector received
    decoder_problems: dict            # otel_kafka_ebpf.decoder.problems by problem, as last exported
    health: dict                      # the agent's other counters, as last exported (lost events, gap bytes, ...)
    agent_alive: bool                 # still running when the producer was done
    agent_exit: int | None
    agent_cpu_s: float                # the agent's CPU time over the whole run
    agent_stderr: str = field(repr=False, default="")

    @property
    def capture(self) -> dict:
        """The agent's last line about the capture: bytes, events, lost events, gaps, gap bytes ({} if none)."""
        m = _CAPTURED.search(self.agent_stderr)
        return {k: int(v) for k, v in m.groupdict().items()} if m else {}

    def ring_wraps(self, ring_bytes: int) -> float:
        """How many times the events went round a ring of `ring_bytes` (each record: an 8-byte ring header,
        the event's 48-byte header, its payload and skip table, padded to 8 bytes: at least this much)."""
        c = self.capture
        return (c.get("bytes", 0) + 56 * c.get("events", 0)) / ring_bytes if c else 0.0

    @property
    def ok(self) -> bool:
        return (self.agent_alive and self.agent_exit == 0 and self.send_spans == self.records
                and not self.decoder_problems and "Traceback" not in self.agent_stderr
                and "internal error" not in self.agent_stderr and self.capture.get("lost_events") == 0
                and self.capture.get("gaps") == 0)


def producer_performance(kafka: KafkaTools, topic: str, records: int, throughput: int, record_size: int = 100,
                         timeout: float = 600) -> tuple[int, float]:
    """Kafka's ProducerPerformance, one record per batch and per request (batch.size=1, linger.ms=0, acks=1):
    (records acknowledged, seconds)."""
    t0 = time.monotonic()
    res = kafka.run_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", str(records),
                         "--record-size", str(record_size), "--throughput", str(throughput),
                         "--producer-props", f"bootstrap.servers={kafka.bootstrap}", "acks=1", "linger.ms=0",
                         "batch.size=1", timeout=timeout, check=True)
    seconds = time.monotonic() - t0
    totals = re.findall(r"^(\d+) records sent", res.stdout, re.M)
    return (int(totals[-1]) if totals else 0), seconds


def _export_files(collector: Collector, signal: str) -> list[str]:
    """The Collector's file exporter output for a signal, rotated backups first."""
    base = collector.export_dir / f"{signal}.jsonl"
    backups = sorted(glob.glob(str(collector.export_dir / f"{signal}-*.jsonl")))
    return backups + ([str(base)] if base.exists() else [])


def count_spans(collector: Collector, name: str) -> int:
    n = 0
    needle = f'"name":"{name}"'.encode()
    for path in _export_files(collector, "traces"):
        with open(path, "rb") as fh:
            for line in fh:
                if needle not in line:
                    continue
                for rs in json.loads(line).get("resourceSpans", ()):
                    for ss in rs.get("scopeSpans", ()):
                        n += sum(1 for s in ss.get("spans", ()) if s.get("name") == name)
    return n


def _point_value(point: dict) -> int:
    return int(point.get("asInt", point.get("asDouble", 0)))


def agent_health(collector: Collector) -> tuple[dict, dict]:
    """The agent's own metrics as last exported: (decoder problems by problem, {metric: value} of the rest)."""
    problems: dict[str, int] = {}
    health: dict[str, int] = {}
    for path in _export_files(collector, "metrics"):
        with open(path, "rb") as fh:
            for line in fh:
                if b"otel_kafka_ebpf." not in line:
                    continue
                for rm in json.loads(line).get("resourceMetrics", ()):
                    for sm in rm.get("scopeMetrics", ()):
                        for m in sm.get("metrics", ()):
                            name = m.get("name", "")
                            if not name.startswith("otel_kafka_ebpf."):
                                continue
                            data = m.get("sum") or m.get("gauge") or {}
                            for p in data.get("dataPoints", ()):
                                attrs = {a["key"]: next(iter(a["value"].values())) for a in p.get("attributes", ())}
                                if name == "otel_kafka_ebpf.decoder.problems":
                                    problems[attrs.get("problem", "?")] = _point_value(p)
                                elif not attrs:
                                    health[name] = _point_value(p)
    return {k: v for k, v in problems.items() if v}, health


def frames_out_of_step(recording: str | os.PathLike, limit: int = 20) -> tuple[list[tuple], dict]:
    """A recording checked for loss of frame sync that no gap explains: each direction's frames are followed
    by their size fields (across skipped ranges), and every event the kernel marked as starting a frame must
    start where the size fields say one starts; the decoder reads the same events. Returns (the first
    `limit` disagreements, the decoder's counters): an empty list on a stream in step."""
    from otel_kafka_ebpf.capture.recording import read_recording
    from otel_kafka_ebpf.capture.streams import StreamData, StreamGap
    from otel_kafka_ebpf.kafka.connection import KafkaStreamDecoder

    state: dict = {}  # (conn, direction) -> [next frame start or None when unknown, size bytes so far, stream end]
    problems: list[tuple] = []
    decoder = KafkaStreamDecoder()
    for index, ev in enumerate(read_recording(recording)):
        decoder.feed(ev)
        if type(ev) is StreamGap:
            st = state.setdefault((ev.conn_id, ev.direction), [0, b"", 0])
            st[2] = ev.offset + ev.length
            if ev.reason.is_loss:
                st[0], st[1] = None, b""
            continue
        if type(ev) is not StreamData:
            continue
        key = (ev.conn_id, ev.direction)
        st = state.setdefault(key, [0, b"", 0])
        if ev.offset != st[2]:
            problems.append((index, key, "offset jump without a gap", st[2], ev.offset))
            st[0], st[1] = None, b""
        if ev.frame_start:
            if st[0] is not None and ev.offset != st[0]:
                problems.append((index, key, "frame start where no frame starts", st[0], ev.offset))
            st[0], st[1] = ev.offset, b""
        pos, prev = ev.offset, 0
        for at, n in (*ev.skips, (len(ev.data), 0)):
            run = ev.data[prev:at]
            while st[0] is not None and st[0] < pos + len(run):
                i = max(0, st[0] - pos) + len(st[1])
                st[1] += run[i:i + 4 - len(st[1])]
                if len(st[1]) < 4:
                    break
                size = int.from_bytes(st[1], "big", signed=True)
                if not 4 <= size <= 256 << 20:
                    problems.append((index, key, "not a frame size", st[0], size))
                    st[0] = None
                else:
                    st[0] += 4 + size
                st[1] = b""
            pos += len(run)
            if n and st[0] is not None and pos <= st[0] < pos + n:
                problems.append((index, key, "a skip over a frame start", st[0], pos, n))
                st[0], st[1] = None, b""
            pos += n
            prev = at
        st[2] = ev.offset + ev.wire_length
        if len(problems) >= limit:
            break
    decoder.finish()
    return problems, dict(decoder.summary())


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except OSError:
        return 0.0


def run_load(kafka: KafkaTools, collector: Collector, *, records: int, throughput: int, ringbuf_mb: int | None = None,
             record_to: str | os.PathLike | None = None, record_size: int = 100, extra_args: tuple = ()) -> LoadResult:
    """One run: a new topic, the agent started (watching only the broker's port), ProducerPerformance to its
    end, the agent's next metric export waited for, the agent stopped; then what reached the Collector."""
    topic = f"load-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=1)
    args = ["--kafka-port", str(kafka.port), "--ports-only", *extra_args]
    if ringbuf_mb:
        args += ["--ringbuf-mb", str(ringbuf_mb)]
    if record_to:
        args += ["--record", str(record_to)]
    env = {**collector.agent_env(), "OKE_METRICS_EXPORT_INTERVAL_MS": "1000"}
    agent = AgentCLI("run", *args, ready="exporting", env=env)
    with agent:
        cpu0 = _cpu_seconds(agent.pid)
        sent, seconds = producer_performance(kafka, topic, records, throughput, record_size)
        name = f"send {topic}"
        try:  # every span the agent built reaches the Collector within a few export intervals
            wait_until(lambda: count_spans(collector, name) >= sent or None, timeout=30, interval=1,
                       what=f"{sent} spans {name!r}")
        except BackendError:
            pass  # counted below
        time.sleep(2.5)  # a metric export after the last pair
        alive = agent.proc.poll() is None
        cpu = _cpu_seconds(agent.pid) - cpu0
        rc = agent.stop()
    time.sleep(1.5)  # the Collector's file exporter flushes each second
    problems, health = agent_health(collector)
    return LoadResult(records=sent, producer_seconds=round(seconds, 1), requests_per_s=round(sent / seconds),
                      send_spans=count_spans(collector, name), decoder_problems=problems, health=health,
                      agent_alive=alive, agent_exit=rc, agent_cpu_s=round(cpu, 1), agent_stderr=agent.err)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--records", type=int, default=150_000)
    ap.add_argument("--throughput", type=int, default=10_000)
    ap.add_argument("--ringbuf-mb", type=int, default=None)
    ap.add_argument("--record-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    with KafkaBroker() as kafka:
        for i in range(1, args.runs + 1):
            with Collector("file-only.yaml") as collector:
                record = Path(args.record_dir) / f"run-{i}.okerec" if args.record_dir else None
                r = run_load(kafka, collector, records=args.records, throughput=args.throughput,
                             ringbuf_mb=args.ringbuf_mb, record_to=record)
            results.append(r)
            last = [line for line in r.agent_stderr.splitlines() if line.strip()][-3:]
            c = r.capture
            print(f"run {i}: {'ok' if r.ok else 'FAILED'}: {r.records} records at {r.requests_per_s}/s, "
                  f"{r.send_spans} send spans, decoder problems {r.decoder_problems or 0}, "
                  f"lost events {c.get('lost_events', '?')}, gaps {c.get('gaps', '?')}, "
                  f"{r.ring_wraps((args.ringbuf_mb or 16) << 20):.1f} ring wraps, "
                  f"agent alive {r.agent_alive} (exit {r.agent_exit}), agent CPU {r.agent_cpu_s} s", flush=True)
            if not r.ok:
                print("  " + "\n  ".join(last), flush=True)
            if record:
                problems, counters = frames_out_of_step(record)
                print(f"  {record}: {len(problems)} frames out of step {problems[:3]}; decoder {counters}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in asdict(r).items() if k != "agent_stderr"}
                                               for r in results], indent=1) + "\n")
    print(f"{sum(r.ok for r in results)} of {len(results)} runs ok")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
