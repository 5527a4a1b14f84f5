"""A broker whose answers to the agent's own Metadata and ListOffsets requests are damaged (tests/testbed/
garble_proxy.py: bodies of 0xff bytes, a frame cut short after its correlation id, a short read and a closed
connection). `run` keeps exporting the clients' spans, counts each damaged answer by kind and outcome in
otel_kafka_ebpf.broker.lookups, and says it once, in one line; never a traceback, never an exit."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest


from tests.testbed.agent_cli import AgentCLI
from tests.testbed.backends import wait_until
from tests.testbed.garble_proxy import MODES, GarbleProxy
from tests.testbed.kafka import KafkaBroker
from tests.workloads import Workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

OUTCOME = {"garbage": "undecodable", "cut": "undecodable", "short": "failed"}


@pytest.fixture(scope="module")
def garbled():
    with GarbleProxy() as proxy:
        with KafkaBroker(advertised_port=proxy.port) as broker:
            proxy.target = ("127.0.0.1", broker.port)
            yield broker, proxy


def _lookups(export) -> dict[tuple[str, str], int]:
    out = {}
    for line in export.read_text().splitlines():
        for rm in json.loads(line).get("resourceMetrics", []):
            for sm in rm.get("scopeMetrics", []):
                for m in sm.get("metrics", []):
                    if m["name"] != "otel_kafka_ebpf.broker.lookups":
                        continue
                    for p in m["sum"]["dataPoints"]:
                        a = {x["key"]: x["value"]["stringValue"] for x in p["attributes"]}
                        out[(a["kind"], a["outcome"])] = int(p["asInt"])
    return out


def _send_spans(export) -> int:
    n = 0
    for line in export.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                n += sum(1 for s in ss.get("spans", []) if s["name"].startswith("send "))
    return n


@pytest.mark.parametrize("mode", MODES)
def test_run_counts_damaged_lookups_and_keeps_exporting(garbled, tmp_path, mode):
    broker, proxy = garbled
    proxy.mode = mode
    before = proxy.damaged[mode]
    topic = broker.create_topic(f"garbled-{mode}", partitions=1)
    export = tmp_path / "export.jsonl"
    run = AgentCLI("run", "--exporter", "file", "--file-path", str(export), "--kafka-port", str(proxy.port),
                   "--ports-only", ready="exporting", env={"OKE_METRICS_EXPORT_INTERVAL_MS": "500"})
    # The consumer starts before the agent: the agent has not seen its Metadata exchange (Fetch names topics by
    # id) and asks the broker itself, for names or, for a consumer it has not seen fetch, high watermarks
    with Workload("java", f"127.0.0.1:{proxy.port}", topic, tmp_path / "c.jsonl", mode="consume", messages=60,
                  size=100, timeout_s=60, client_id=f"garbled-{mode}-c") as consumer:
        time.sleep(5)
        with run:
            with Workload("java", f"127.0.0.1:{proxy.port}", topic, tmp_path / "p.jsonl", mode="produce",
                          messages=60, rate=30, size=100, timeout_s=60) as producer:
                gt = producer.wait()
            wait_until(lambda: proxy.damaged[mode] > before or None, timeout=20, interval=0.2,
                       what=f"a damaged ({mode}) answer to the agent's lookup")
            time.sleep(2)  # it goes on exporting after it
            run.stop(signal.SIGTERM)
        consumer.wait()
    assert run.proc.returncode == 0, run.err
    assert "Traceback" not in run.err, run.err
    assert proxy.lookups >= 1 and proxy.damaged[mode] > before, (proxy.lookups, proxy.damaged)
    lookups = _lookups(export)
    damaged = {kind: n for (kind, outcome), n in lookups.items() if outcome == OUTCOME[mode]}
    assert damaged and sum(damaged.values()) >= 1, lookups
    told = [line for line in run.err.splitlines() if "the agent's own" in line]
    assert len(told) == len(damaged), run.err  # one line per kind, however many answers
    assert all(f"outcome {OUTCOME[mode]}" in line and "Traceback" not in line for line in told), told
    assert len(run.err.splitlines()) < 12, run.err  # one line, not one per answer
    assert _send_spans(export) >= 1 and gt.produced, run.err  # and it kept exporting
