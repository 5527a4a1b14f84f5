"""bench/bench_lag.py's parts that need no cluster: the agent reporter reading the interface the agent
is to write (OTLP/JSON lines), the ground-truth lag in seconds, the stop schedule, the summary."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.workloads import GroundTruth

_spec = importlib.util.spec_from_file_location(
    "bench_lag", Path(__file__).resolve().parents[2] / "bench" / "bench_lag.py")
bench = sys.modules.setdefault("bench_lag", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)

GROUP, TOPIC = "g", "t"


def _attrs(**kv) -> list[dict]:
    def value(v):
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}
    return [{"key": k, "value": value(v)} for k, v in kv.items()]


def _consumer_attrs(partition, group=GROUP):
    return {"messaging.consumer.group.name": group, "messaging.destination.name": TOPIC,
            "messaging.destination.partition.id": str(partition), "messaging.client.id": "okw-go-c"}


def status_line(status: str, partition: int, t_ns: int, group: str = GROUP, cause: str | None = None) -> str:
    attrs = {**_consumer_attrs(partition, group), "otel_kafka_ebpf.consumer.status": status}
    if cause:
        attrs["otel_kafka_ebpf.lag.cause"] = cause
    return json.dumps({"resourceLogs": [{"resource": {"attributes": _attrs(**{"service.name": "svc"})},
                                         "scopeLogs": [{"logRecords": [{
                                             "timeUnixNano": str(t_ns), "eventName": "otel_kafka_ebpf.consumer.status",
                                             "attributes": _attrs(**attrs)}]}]}]})


def gauges_line(partition: int, t_ns: int, messages: int, seconds: float) -> str:
    attrs = _attrs(**_consumer_attrs(partition))
    return json.dumps({"resourceMetrics": [{"resource": {}, "scopeMetrics": [{"metrics": [
        {"name": "messaging.kafka.consumer.lag",
         "gauge": {"dataPoints": [{"timeUnixNano": str(t_ns), "asInt": str(messages), "attributes": attrs}]}},
        {"name": "otel_kafka_ebpf.consumer.lag.seconds",
         "gauge": {"dataPoints": [{"timeUnixNano": str(t_ns), "asDouble": seconds, "attributes": attrs}]}},
    ]}]}]})


def test_agent_reporter_reads_status_records_and_lag_gauges(tmp_path):
    agent = bench.AgentReporter(tmp_path / "agent.jsonl", [], GROUP, TOPIC)
    agent._take(status_line("OK", 0, 1_000_000_000))
    agent._take(status_line("STALL", 1, 2_000_000_000, group="other"))   # another group: ignored
    agent._take(gauges_line(2, 3_000_000_000, 600, 2.5))
    agent._take(status_line("STOP", 2, 3_000_000_000))
    agent._take("")
    assert [(r.lagging, r.what) for r in agent.reports] == [
        (False, "OK partition 0 client okw-go-c"), (True, "STOP partition 2 client okw-go-c")]
    assert [(s.time, s.partition, s.seconds) for s in agent.samples] == [(3.0, 2, 2.5)]
    first = agent.first_lagging(0, float("inf"))
    assert first is agent.reports[1]


def _truth() -> "bench.Truth":
    lines = [{"event": "start", "client": "go", "pid": 1, "client_id": "c", "version": "1", "time_ns": 0}]
    produced = lines + [
        {"event": "produce", "client": "go", "pid": 1, "client_id": "p", "topic": TOPIC, "partition": 0,
         "offset": o, "timestamp_ms": 0, "send_ns": (10 + o) * 10**9, "ack_ns": (10 + o) * 10**9,
         "key": f"k{o}", "value_size": 1} for o in range(10)]
    consumed = lines + [
        {"event": "consume", "client": "go", "pid": 1, "client_id": "c", "group": GROUP, "topic": TOPIC,
         "partition": 0, "offset": o, "timestamp_ms": 0, "consume_ns": (10.5 + o) * 10**9, "key": f"k{o}"}
        for o in range(4)]   # offsets 0..3 received half a second after they were sent, then a stop
    return bench.Truth(GroundTruth.parse(map(json.dumps, produced)), GroundTruth.parse(map(json.dumps, consumed)))


def test_truth_is_the_age_of_the_first_unconsumed_message():
    truth = _truth()
    assert truth.position(0, 9.0) == 0
    assert truth.lag_seconds(0, 9.0) == 0.0            # nothing produced yet
    assert truth.lag_seconds(0, 10.25) == pytest.approx(0.25)   # offset 0 sent at 10, not received
    assert truth.position(0, 12.6) == 3
    assert truth.lag_seconds(0, 12.75) == 0.0          # offset 3 is sent at 13
    assert truth.position(0, 30.0) == 4
    assert truth.lag_seconds(0, 30.0) == pytest.approx(30.0 - 14.0)   # stopped before offset 4


def test_stops_fall_on_evenly_spread_phases_of_the_poll_cycle():
    windows = bench.schedule(first_poll=1000.0, interval=30.0, stops=4, stop_s=40.0, warmup_s=31.0,
                             healthy_s=35.0)
    phases = [(stop - 1000.0) % 30.0 for stop, _ in windows]
    assert phases == pytest.approx([3.75, 11.25, 18.75, 26.25])
    assert windows[0][0] >= 1031.0
    for (_, resume), (stop, _) in zip(windows, windows[1:]):
        assert stop - resume >= 35.0
    assert all(resume - stop == 40.0 for stop, resume in windows)


def test_summary_takes_detection_and_error_inside_the_stops_only():
    r = bench.Reporter()
    r.reports = [bench.Report(5.0, True, "before the stop"), bench.Report(25.0, False, "ok"),
                 bench.Report(26.0, True, "lagging")]
    r.samples = [bench.LagSample(15.0, 0, 99.0), bench.LagSample(26.0, 0, 10.0)]
    s = bench.summarize(r, [(20.0, 60.0)], _truth())
    assert s["detections"] == [{"after_s": 6.0, "what": "lagging"}]
    assert s["detection_median_s"] == 6.0 and s["missed"] == 0
    assert s["lag_seconds_error"]["samples"] == 1
    assert s["lag_seconds_error"]["mean_s"] == pytest.approx(10.0 - (26.0 - 14.0))


def test_the_time_to_the_right_cause_beside_the_time_to_the_status(tmp_path):
    """A stopped consumer's right cause is `stopped`: the summary times the first record that names it."""
    agent = bench.AgentReporter(tmp_path / "agent.jsonl", [], GROUP, TOPIC)
    agent._take(status_line("WARN", 0, 1, cause="processing"))  # lagging, not yet the right cause
    agent._take(status_line("STOP", 0, 2, cause="stopped"))
    agent.reports[0].seen, agent.reports[1].seen = 21.0, 22.5
    assert agent.reports[1].what == "STOP (stopped) partition 0 client okw-go-c"
    s = bench.summarize(agent, [(20.0, 60.0), (70.0, 90.0)], _truth())
    assert s["detections"][0]["after_s"] == 1.0 and s["cause_detections"][0]["after_s"] == 2.5
    assert s["cause_detections"][1] is None and s["cause_median_s"] == 2.5 and s["right_cause"] == "stopped"
    poller = bench.Reporter()
    poller.reports = [bench.Report(25.0, True, "lag grew")]
    assert bench.summarize(poller, [(20.0, 60.0)], _truth())["right_cause"] is None  # it names no cause
