"""The decoder against the live broker and the four real clients, through the recording proxy.

- The version range each decoder states covers what the live broker advertises.
- For each client workload run through the proxy, `trace --json` over the recorded streams
  reports every produced offset in a Produce pair and every consumed offset in a Fetch pair's
  batches, with the workload's pid, client id, topic and partition (its own ground truth).
"""

from __future__ import annotations

import argparse
import io
import json
import uuid
from collections import defaultdict

import pytest

from otel_kafka_ebpf.kafka import SUPPORTED
from otel_kafka_ebpf.kafka.versions import API_VERSIONS, FETCH, METADATA, PRODUCE, api_name
from otel_kafka_ebpf.pipeline import run_trace
from otel_kafka_ebpf.sinks.pairs import add_trace_arguments
from tests.testbed.kafka import KafkaBroker
from tests.testbed.recording_proxy import RecordingProxy
from tests.workloads import CLIENTS, run_workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxied_broker():
    """A broker that advertises the recording proxy's port: every client connection is recorded."""
    with RecordingProxy() as proxy:
        with KafkaBroker(advertised_port=proxy.port) as broker:
            proxy.target = ("127.0.0.1", broker.port)
            yield broker, proxy


def test_stated_ranges_cover_the_live_broker(proxied_broker):
    broker, _ = proxied_broker
    advertised = broker.api_versions()
    for key in (PRODUCE, FETCH, METADATA, API_VERSIONS):
        assert key in advertised
    checked = 0
    for key, (lo, hi) in SUPPORTED.items():
        if key not in advertised:
            continue
        b_lo, b_hi = advertised[key]
        assert lo <= b_lo and b_hi <= hi, f"{api_name(key)}: decoder {lo}-{hi}, broker {b_lo}-{b_hi}"
        checked += 1
    assert checked == len(SUPPORTED), sorted(set(SUPPORTED) - set(advertised))


def _trace_json(events, *argv: str) -> list[dict]:
    parser = argparse.ArgumentParser()
    add_trace_arguments(parser)
    out = io.StringIO()
    assert run_trace(events, parser.parse_args(["--json", *argv]), out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("client", CLIENTS)
def test_trace_json_reports_every_produced_and_consumed_offset(proxied_broker, client, tmp_path):
    broker, proxy = proxied_broker
    topic = f"live-{client}-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, partitions=3)
    proxy.wait_idle(15)
    proxy.take_events()
    gt = run_workload(client, f"127.0.0.1:{proxy.port}", topic, tmp_path / "truth.jsonl",
                      partitions=3, messages=150, compression="gzip", linger_ms=10)
    assert proxy.wait_idle(15)
    records = _trace_json(proxy.take_events(), "--topic", topic)

    produced = defaultdict(set)  # (client id, partition) -> offsets in Produce pairs
    fetched = defaultdict(set)
    pids = set()
    for rec in records:
        assert rec["api"] in ("Produce", "Fetch", "Metadata"), rec["api"]
        pids.add(rec["pid"])
        assert rec["server"] == f"127.0.0.1:{proxy.port}"
        for p in rec.get("partitions", ()):
            assert p["topic"] == topic
            if rec["api"] == "Produce":
                assert rec["response_ns"] > rec["request_ns"] and p["error_code"] == 0
                assert p["first_timestamp"] <= p["max_timestamp"]
                produced[(rec["client_id"], p["partition"])].update(
                    range(p["base_offset"], p["base_offset"] + p["record_count"]))
            elif rec["api"] == "Fetch":
                for b in p["batches"]:
                    if not b.get("partial") and not b.get("control"):
                        assert b["last_offset"] - b["base_offset"] + 1 >= b["record_count"]
                        fetched[(rec["client_id"], p["partition"])].update(
                            range(b["base_offset"], b["last_offset"] + 1))
    assert pids == {gt.process_pid} or pids == {gt.pid}, (pids, gt.pid, gt.process_pid)
    assert len(gt.produced) == 150 and len(gt.consumed) == 150
    for p in gt.produced:
        assert p.offset in produced[(p.client_id, p.partition)], p
    for c in gt.consumed:
        assert c.offset in fetched[(c.client_id, c.partition)], c
    # and nothing else: the Produce pairs hold exactly the records the workload produced
    assert sum(len(v) for v in produced.values()) == len(gt.produced)
