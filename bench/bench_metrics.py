"""Metric path benchmark: delivered messages per second on one core, recorded in batches.

Every message counts in the latency histogram and the consumed-messages counter, but a batch of N
messages is one aggregation step. Consumers of 12 partitions receive batches of 10, 100 and 500
messages whose produce times are in the offset index (their producer was seen); each batch goes through
the metrics sink as the pipeline hands it over (settling, produce-time lookup, histogram, counter), the
lag tracker sees each fetch, statuses are evaluated every 100 ms and metrics exported every second, all
in event time. Target: >= 500,000 messages/s on one core.

    .venv/bin/python bench/bench_metrics.py [--seconds 2] [--out bench/results/metrics.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otel_kafka_ebpf.agent import Agent  # noqa: E402
from otel_kafka_ebpf.config import load_config  # noqa: E402
from otel_kafka_ebpf.correlate.batches import DeliveredBatch  # noqa: E402
from otel_kafka_ebpf.correlate.clusters import Endpoint  # noqa: E402
from otel_kafka_ebpf.correlate.lag import Instance, PartitionKey  # noqa: E402

TARGET = 500_000
PARTITIONS = 12


class NullTransport:
    def describe(self) -> str:
        return "bench"

    def send(self, signal, payload, timeout) -> int:
        return 0

    def close(self) -> None:
        pass


def run(batch_size: int, seconds: float) -> dict:
    agent = Agent(load_config(None, None, environ={}), live=False, transport=NullTransport(), start_ns=0)
    correlator = agent.pipeline.correlator
    server = Endpoint(0, "127.0.0.1", 9092)
    correlator.clusters.learn(server, "bench-cluster")
    sink, tracker = agent.metrics, correlator.lag
    keys = [PartitionKey("bench-cluster", "orders", p) for p in range(PARTITIONS)]
    me = Instance(4242, "billing-1")
    offsets = [0] * PARTITIONS
    t = 1_000_000_000_000
    messages = 0
    cpu0 = time.process_time()
    while time.process_time() - cpu0 < seconds:
        batches = []
        t += 1_000_000  # a fetch a millisecond
        for p, key in enumerate(keys):
            base = offsets[p]
            tracker.produced(key, base, batch_size, t - 5_000_000)
            batches.append(DeliveredBatch(4242, "billing-1", 1, server, "bench-cluster", "orders", None, p, "billing",
                                          base, base + batch_size - 1, batch_size, 1, 1, 0, base,
                                          base + batch_size, t - 100_000, t, t - 200_000, 500))
            tracker.fetched(me, "billing", 1, key, base, base + batch_size, t - 200_000, t, 500, False)
            offsets[p] += batch_size
            messages += batch_size
        sink.batches(batches, t)
        agent.pipeline.tick(t)
    cpu = time.process_time() - cpu0
    agent.close(timeout_s=1)
    counted = sum(s[1] for s in sink.latency.series.values())
    return {"batch_size": batch_size, "messages": messages, "counted_in_histogram": counted, "cpu_s": cpu,
            "messages_per_s": messages / cpu, "batches_per_s": messages / batch_size / cpu}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "metrics.json"))
    args = ap.parse_args()
    results = [run(n, args.seconds) for n in (10, 100, 500)]
    print("bench_metrics: delivered messages through the metric path (settle, produce time, histogram, counter, "
          "lag tracker, statuses every 100 ms, export every 1 s), one core")
    for r in results:
        print(f"  batches of {r['batch_size']:>3}: {r['messages_per_s']:>12,.0f} messages/s  "
              f"({r['batches_per_s']:,.0f} batches/s; x{r['messages_per_s'] / TARGET:.1f} of the {TARGET:,} target)")
        assert r["counted_in_histogram"] >= r["messages"] - PARTITIONS * r["batch_size"] * 400, r  # all but settling
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "metrics", "machine": platform.node(), "cpus": os.cpu_count(),
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "target": TARGET,
                                          "results": results}, indent=1))
    print(f"  written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
