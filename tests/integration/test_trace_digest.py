"""`trace --json` with the digest capture against real clients at volume: every produced and consumed
offset accounted for, no gap reported as a loss, and a digest agent and a full-copy agent side by
side give the same pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_trace_live import TraceCLI
from tests.workloads import run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _ours(kafka_broker, *extra: str) -> TraceCLI:
    """A `trace --json` agent that sees only this broker's connections (other processes on the host
    are traced too otherwise), and says how many gaps it met."""
    return TraceCLI("--kafka-port", str(kafka_broker.port), "--ports-only", *extra)


def _summary(trace: TraceCLI) -> tuple[int, int]:
    """(ring buffer drops, loss gaps) from the agent's last line."""
    line = [line for line in trace.err.splitlines() if "Kafka connections" in line][-1]
    drops = int(line.split("lost ")[1].split()[0])
    gaps = int(line.split("buffer; ")[1].split()[0])
    return drops, gaps


def _ranges(pairs: list[dict], api: str) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """(topic, partition) -> [(first, last)] offsets in Produce pairs or in Fetch pairs' batches."""
    out: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for p in pairs:
        if p["api"] != api:
            continue
        for part in p.get("partitions", []):
            key = (part["topic"], part["partition"])
            if api == "Produce" and part.get("base_offset") is not None and part["base_offset"] >= 0:
                out.setdefault(key, []).append((part["base_offset"], part["base_offset"] + part["record_count"] - 1))
            elif api == "Fetch":
                out.setdefault(key, []).extend((b["base_offset"], b["last_offset"]) for b in part["batches"])
    return out


def _missing(ranges: list[tuple[int, int]], end: int) -> int:
    """How many of the offsets 0..end-1 no range covers."""
    covered = set()
    for lo, hi in ranges:
        covered.update(range(max(lo, 0), min(hi, end - 1) + 1))
    return end - len(covered)


def _end_offsets(kafka_broker, topic: str) -> dict[int, int]:
    out = kafka_broker.run_tool("kafka-get-offsets", "--bootstrap-server", kafka_broker.direct_bootstrap,
                                "--topic", topic, check=True).stdout
    ends = {}
    for line in out.split():
        _, partition, offset = line.rsplit(":", 2)
        ends[int(partition)] = int(offset)
    return ends


def _assert_all_offsets(pairs: list[dict], topic: str, ends: dict[int, int], apis=("Produce", "Fetch")) -> None:
    for api in apis:
        ranges = _ranges(pairs, api)
        missing = {p: _missing(ranges.get((topic, p), []), end) for p, end in ends.items()}
        assert not any(missing.values()), f"{api}: offsets not accounted for per partition: {missing}"


def test_perf_tools_catch_up(kafka_broker, topic_factory):
    """Kafka's ProducerPerformance, then ConsumerPerformance catching up with default settings (Fetch
    responses of several MiB): every offset is in a Produce pair and in a Fetch pair's batches."""
    topic = topic_factory(partitions=6)
    records = 300_000
    with _ours(kafka_broker) as trace:
        kafka_broker.run_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", str(records),
                              "--record-size", "200", "--throughput", "-1", "--producer-props",
                              f"bootstrap.servers={kafka_broker.bootstrap}", timeout=300, check=True)
        kafka_broker.run_tool("kafka-consumer-perf-test", "--bootstrap-server", kafka_broker.bootstrap,
                              "--topic", topic, "--num-records", str(records), "--timeout", "60000",
                              timeout=300, check=True)
    ends = _end_offsets(kafka_broker, topic)
    assert sum(ends.values()) == records
    pairs = trace.pairs()
    _assert_all_offsets(pairs, topic, ends)
    fetched = [sum(b["record_count"] for part in p["partitions"] for b in part["batches"])
               for p in pairs if p["api"] == "Fetch" and p.get("partitions")]
    assert max(fetched) * 200 > 2 << 20, "Fetch responses of several MiB (beyond a 1 MiB frame budget)"
    assert _summary(trace) == (0, 0)


def test_java_producer_with_big_requests(kafka_broker, topic_factory):
    """max.request.size 8 MiB, batch.size 1 MiB: Produce requests of several MiB are all accounted for."""
    topic = topic_factory(partitions=3)
    records = 60_000
    with _ours(kafka_broker) as trace:
        kafka_broker.run_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", str(records),
                              "--record-size", "500", "--throughput", "-1", "--producer-props",
                              f"bootstrap.servers={kafka_broker.bootstrap}", "max.request.size=8388608",
                              "batch.size=1048576", "linger.ms=200", timeout=300, check=True)
    ends = _end_offsets(kafka_broker, topic)
    assert sum(ends.values()) == records
    pairs = trace.pairs()
    _assert_all_offsets(pairs, topic, ends, apis=("Produce",))
    biggest = max(sum(part["record_count"] for part in p["partitions"]) for p in pairs if p["api"] == "Produce")
    assert biggest * 500 > 1 << 20, "Produce requests beyond a 1 MiB frame budget"
    assert _summary(trace) == (0, 0)


CONFLUENT_BIG_FETCH = r"""
import json, sys
from confluent_kafka import Consumer
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + "-big", "auto.offset.reset": "earliest",
              "client.id": "big-fetch", "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 52428800,
              "receive.message.max.bytes": 100000000})
c.subscribe([topic])
got = []
while len(got) < n:
    m = c.poll(10)
    if m is None:
        break
    if not m.error():
        got.append((m.partition(), m.offset()))
c.close()
print(json.dumps(got))
"""


def test_confluent_consumer_with_50_mib_fetches(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=2)
    records = 100_000
    kafka_broker.run_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", str(records),
                          "--record-size", "300", "--throughput", "-1", "--producer-props",
                          f"bootstrap.servers={kafka_broker.bootstrap}", timeout=300, check=True)
    with _ours(kafka_broker) as trace:
        run = subprocess.run([sys.executable, "-c", CONFLUENT_BIG_FETCH, kafka_broker.bootstrap, topic, str(records)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    consumed = json.loads(run.stdout)
    assert len(consumed) == records
    ranges = _ranges(trace.pairs(), "Fetch")
    covered = {(p, o) for (t, p), rs in ranges.items() if t == topic for lo, hi in rs for o in range(lo, hi + 1)}
    assert not [c for c in map(tuple, consumed) if c not in covered]
    assert _summary(trace) == (0, 0)


@pytest.mark.parametrize("client,options", [
    ("go", dict(compression="none")), ("go", dict(compression="zstd", transactional=True)),
    ("kafkapython", dict(compression="gzip")), ("kafkapython", dict(compression="none", transactional=True)),
], ids=["go-none", "go-zstd-tx", "kafkapython-gzip", "kafkapython-none-tx"])
def test_workloads_compressed_and_transactional(kafka_broker, topic_factory, tmp_path, client, options):
    """Every produced and consumed offset, with control batches (transaction markers) reported."""
    topic = topic_factory(partitions=3)
    with _ours(kafka_broker) as trace:
        gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"{client}.jsonl", messages=2000,
                          partitions=3, size=300, **options)
    gt.check_consistent()
    pairs = [p for p in trace.pairs() if p["pid"] == gt.pid]
    produced, fetched = _ranges(pairs, "Produce"), _ranges(pairs, "Fetch")

    def covered(ranges, r) -> bool:
        return any(lo <= r.offset <= hi for lo, hi in ranges.get((r.topic, r.partition), []))

    assert not [r for r in gt.produced if not covered(produced, r)]
    assert not [r for r in gt.consumed if not covered(fetched, r)]
    controls = [b for p in pairs if p["api"] == "Fetch" for part in p["partitions"] for b in part["batches"]
                if b.get("control")]
    assert bool(controls) == bool(options.get("transactional"))
    assert _summary(trace) == (0, 0)


def _pair_key(p: dict) -> tuple:
    return (p["pid"], p["client_id"], p["api"], p["correlation_id"], p["server"])


def test_digest_and_full_agents_side_by_side_give_the_same_pairs(kafka_broker, topic_factory, tmp_path):
    """Two agents on the same traffic, one per capture mode: the same pairs with the same fields (times
    within 1 ms: each agent stamps the syscalls itself)."""
    topic = topic_factory(partitions=3)
    with _ours(kafka_broker) as digest, _ours(kafka_broker, "--capture", "full", "--frame-budget",
                                              str(64 << 20)) as full:
        gts = [run_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"{client}.jsonl", messages=500,
                            partitions=3, size=400, compression=codec, client_id=f"side-{client}")
               for client, codec in (("java", "none"), ("confluent", "lz4"), ("go", "snappy"), ("kafkapython", "none"))]
    pids = {gt.pid for gt in gts}
    got = {}
    for name, trace in (("digest", digest), ("full", full)):
        got[name] = {_pair_key(p): p for p in trace.pairs() if p["pid"] in pids}
    assert got["digest"].keys() == got["full"].keys()
    assert len(got["digest"]) > 100
    for key, d in got["digest"].items():
        f = got["full"][key]
        for field in ("request_ns", "response_ns"):
            if d[field] is None or f[field] is None:
                assert d[field] == f[field], (key, field)
            else:
                assert abs(d[field] - f[field]) < 1_000_000, (key, field, d[field] - f[field])
        strip = {"request_ns", "response_ns"}
        assert {k: v for k, v in d.items() if k not in strip} == {k: v for k, v in f.items() if k not in strip}, key
