"""Span export benchmark: recorded real traffic -> decoder -> correlation -> spans -> OTLP request bytes.

The traffic is recorded once (through the test bed's recording proxy, cached in $OKE_CACHE/bench):
Java and franz-go producers and consumers at a steady rate on a 12-partition topic with small batches
(linger.ms=1), the worst case for spans per byte. It is replayed several times over, each copy on fresh
connection ids and later timestamps, through the agent's pipeline exactly as `replay --exporter` runs
it, with a transport that takes the encoded requests and drops them. Measured on one core (process
CPU time):

  whole path   spans/s and CPU per 1,000 batches, decoding included (target >= 20,000 spans/s)
  span stage   the same batches, correlated beforehand, through span building and encoding alone
  SDK path     the same spans built as OpenTelemetry SDK ReadableSpans and encoded by the SDK's OTLP
               encoder (what an exporter built on the SDK would pay), for comparison

    .venv/bin/python bench/bench_spans.py [--copies 3] [--out bench/results/spans.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otel_kafka_ebpf.agent import Agent  # noqa: E402
from otel_kafka_ebpf.capture.streams import Annotation  # noqa: E402
from otel_kafka_ebpf.config import load_config  # noqa: E402
from otel_kafka_ebpf.correlate.batches import DeliveredBatch, ProducedBatch  # noqa: E402
from otel_kafka_ebpf.sinks.spans import build_request  # noqa: E402

TARGET_SPANS_PER_S = 20_000
TRAFFIC_VERSION = 1
CACHE = Path(os.environ.get("OKE_CACHE") or Path.home() / ".cache" / "otel-kafka-ebpf") / "bench"


class CountingTransport:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    def describe(self) -> str:
        return "bench"

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        self.requests += 1
        self.bytes += len(payload)
        return 0

    def close(self) -> None:
        pass


def record_traffic(path: Path) -> None:
    """Steady produce/consume traffic of two clients, through the recording proxy (no BPF needed)."""
    from tests.testbed.kafka import KafkaBroker
    from tests.testbed.recording_proxy import RecordingProxy
    from tests.workloads import start_workload

    print(f"bench_spans: recording traffic once into {path} ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with RecordingProxy(path=tmp, keep_events=False) as proxy:
        with KafkaBroker(advertised_port=proxy.port) as broker:
            proxy.target = ("127.0.0.1", broker.port)
            work = Path(str(path) + ".work")
            work.mkdir(exist_ok=True)
            running = []
            for client in ("java", "go"):
                topic = broker.create_topic(f"bench-spans-{client}", partitions=12)
                opts = dict(partitions=12, messages=12_000, rate=1500, linger_ms=1, size=200, timeout_s=120)
                running.append(start_workload(client, f"127.0.0.1:{proxy.port}", topic, work / f"{client}-c.jsonl",
                                              mode="consume", **opts))
                time.sleep(3)
                running.append(start_workload(client, f"127.0.0.1:{proxy.port}", topic, work / f"{client}-p.jsonl",
                                              mode="produce", **opts))
            for w in running:
                w.wait()
    tmp.rename(path)


def traffic(copies: int) -> list:
    """The recorded traffic, `copies` times, each copy on its own connection ids, later in time."""
    from otel_kafka_ebpf.capture.recording import read_recording

    path = CACHE / f"spans-traffic-v{TRAFFIC_VERSION}.rec.gz"
    if not path.exists():
        record_traffic(path)
    once = list(read_recording(path))
    span_ns = once[-1].ts_ns - once[0].ts_ns + 1_000_000_000
    out = []
    for k in range(copies):
        for e in once:
            if isinstance(e, Annotation):
                out.append(e)
                continue
            changes = {"ts_ns": e.ts_ns + k * span_ns}
            if hasattr(e, "conn_id"):
                changes["conn_id"] = e.conn_id + k * 1_000_000
            out.append(replace(e, **changes))
    return out


def make_agent(transport) -> Agent:
    cfg = load_config(None, {"exporter": {"max_queue_spans": 10_000_000}}, environ={})
    return Agent(cfg, live=False, transport=transport)


def whole_path(events) -> dict:
    transport = CountingTransport()
    agent = make_agent(transport)
    t0 = time.process_time()
    agent.run(events)
    agent.pipeline.finish()
    cpu = time.process_time() - t0
    agent.exporter.shutdown(30)
    st = agent.spans.builder.stats
    spans = st["send_spans"] + st["poll_spans"]
    return {"spans": spans, "cpu_s": cpu, "spans_per_s": spans / cpu, "cpu_ms_per_1000_batches": cpu / spans * 1e6,
            "requests": transport.requests, "request_bytes": transport.bytes}


def collect_batches(events) -> tuple[list, Agent]:
    agent = make_agent(CountingTransport())
    batches = []

    class Collect:
        def batches(self, bs, now_ns):
            batches.extend(bs)

    agent.pipeline.add_sink(Collect())
    agent.run(events)
    agent.pipeline.finish()
    agent.exporter.shutdown(1)
    return batches, agent


def span_stage(batches, agent) -> dict:
    builder = agent.spans.builder
    t0 = time.process_time()
    built = []
    for b in batches:
        out = builder.send(b) if type(b) is ProducedBatch else builder.poll(b)
        if out is not None:
            built.append(out)
        if len(built) >= 512:
            build_request(built)
            built = []
    build_request(built)
    cpu = time.process_time() - t0
    return {"spans": len(batches), "cpu_s": cpu, "spans_per_s": len(batches) / cpu}


def sdk_path(batches, agent) -> dict:
    """The same spans as SDK ReadableSpans, encoded by the SDK's OTLP encoder."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    from otel_kafka_ebpf.correlate.ids import batch_ids, span_id_of

    t0 = time.process_time()
    resources: dict[int, Resource] = {}
    pending = []
    for b in batches:
        res = resources.get(b.pid)
        if res is None:
            res = resources[b.pid] = Resource(agent.resources.attributes(b.pid))
        trace_id, span_id = batch_ids(b.cluster_id, b.topic_name, b.partition, b.base_offset or 0)
        parent = None
        kind = SpanKind.PRODUCER
        start, end = b.start_ns, b.end_ns or b.start_ns
        if type(b) is DeliveredBatch:
            parent = SpanContext(int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"), True,
                                 TraceFlags(1))
            span_id = span_id_of("poll", trace_id, b.pid, b.client_id, b.conn_id, b.start_ns)
            kind = SpanKind.CONSUMER
        ctx = SpanContext(int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"), False, TraceFlags(1))
        attrs = {"messaging.system": "kafka", "messaging.operation.name": "send" if parent is None else "poll",
                 "messaging.operation.type": "send" if parent is None else "receive",
                 "messaging.destination.name": b.topic_name, "messaging.destination.partition.id": str(b.partition),
                 "messaging.kafka.offset": b.base_offset or 0, "messaging.batch.message_count": b.record_count,
                 "messaging.client.id": b.client_id or "", "server.address": b.server.addr if b.server else "",
                 "server.port": b.server.port if b.server else 0}
        pending.append(ReadableSpan(name=f"send {b.topic_name}", context=ctx, parent=parent, resource=res,
                                    attributes=attrs, kind=kind, start_time=start, end_time=end))
        if len(pending) >= 512:
            encode_spans(pending).SerializeToString()
            pending = []
    if pending:
        encode_spans(pending).SerializeToString()
    cpu = time.process_time() - t0
    return {"spans": len(batches), "cpu_s": cpu, "spans_per_s": len(batches) / cpu}


def profile_top(events, n: int = 12) -> str:
    prof = cProfile.Profile()
    agent = make_agent(CountingTransport())
    prof.enable()
    agent.run(events)
    agent.pipeline.finish()
    prof.disable()
    agent.exporter.shutdown(1)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    return s.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "spans.json"))
    ap.add_argument("--profile", action="store_true", help="also print where the whole path spends its time")
    args = ap.parse_args()
    events = traffic(args.copies)
    whole = min((whole_path(events) for _ in range(3)), key=lambda r: r["cpu_s"])
    batches, agent = collect_batches(events)
    stage = min((span_stage(batches, agent) for _ in range(3)), key=lambda r: r["cpu_s"])
    sdk = min((sdk_path(batches, agent) for _ in range(2)), key=lambda r: r["cpu_s"])
    print(f"bench_spans: {len(events)} recorded events, {whole['spans']} spans (Java and franz-go, 12 partitions, "
          f"{args.copies} copies of the recording), best of 3, one core")
    print(f"  whole path (decode + correlate + spans + OTLP bytes): {whole['spans_per_s']:,.0f} spans/s, "
          f"{whole['cpu_ms_per_1000_batches']:.1f} ms CPU per 1,000 batches  "
          f"(x{whole['spans_per_s'] / TARGET_SPANS_PER_S:.2f} of the {TARGET_SPANS_PER_S:,} target)")
    print(f"  span stage alone (build + encode):                    {stage['spans_per_s']:,.0f} spans/s")
    print(f"  the same spans through the OpenTelemetry SDK encoder: {sdk['spans_per_s']:,.0f} spans/s "
          f"(x{stage['spans_per_s'] / sdk['spans_per_s']:.1f} slower than the direct encoding)")
    if args.profile:
        print(profile_top(events))
    result = {"bench": "spans", "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "target_spans_per_s": TARGET_SPANS_PER_S,
              "whole_path": whole, "span_stage": stage, "sdk_path": sdk}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
