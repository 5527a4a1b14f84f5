"""`trace`/`replay` presentation over recorded real traffic: fields, topic names, filters."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from otel_kafka_ebpf.pipeline import run_trace
from otel_kafka_ebpf.sinks.pairs import add_trace_arguments
from tests.unit.kafka import vectors

NAME = "java-zstd-3p"  # Produce v13 / Fetch v18: topics by id only, names from Metadata


def _run(*argv: str, name: str = NAME) -> str:
    parser = argparse.ArgumentParser()
    add_trace_arguments(parser)
    out = io.StringIO()
    assert run_trace(vectors.events(name), parser.parse_args(list(argv)), out) == 0
    return out.getvalue()


def _json(*argv: str, name: str = NAME) -> list[dict]:
    return [json.loads(line) for line in _run("--json", *argv, name=name).splitlines()]


def test_json_lines_carry_the_pair_fields_and_topic_names_resolved_from_ids():
    records = _json()
    gt = vectors.truth(NAME)
    topic = gt.produced[0].topic
    opened = {e.conn_id: e for e in vectors.events(NAME) if type(e).__name__ == "ConnectionOpened"}
    assert {r["pid"] for r in records} == {e.pid for e in opened.values()} and all(r["pid"] > 0 for r in records)
    for r in records:
        assert set(r) >= {"api", "version", "pid", "comm", "client_id", "correlation_id", "request_ns",
                          "response_ns", "server"}
        assert r["response_ns"] is None or r["response_ns"] >= r["request_ns"]
    produce = [r for r in records if r["api"] == "Produce"]
    assert produce and all(r["version"] == 13 for r in produce)
    partitions = [p for r in produce for p in r["partitions"]]
    assert {p["topic"] for p in partitions} == {topic}
    assert sum(p["record_count"] for p in partitions) == len(gt.produced)
    by_offset = {(p.partition, p.offset): p.timestamp_ms for p in gt.produced}
    for p in partitions:
        stamps = [by_offset[(p["partition"], o)] for o in range(p["base_offset"], p["base_offset"] + p["record_count"])]
        assert (p["first_timestamp"], p["max_timestamp"]) == (stamps[0], max(stamps))
    fetch = [r for r in records if r["api"] == "Fetch" and r["partitions"]]
    batches = [(p["partition"], b) for r in fetch for p in r["partitions"] for b in p["batches"]]
    assert {(c.partition, c.offset) for c in gt.consumed} <= {
        (part, o) for part, b in batches for o in range(b["base_offset"], b["last_offset"] + 1)}
    assert all(p["fetch_offset"] is not None and p["high_watermark"] >= 0 for r in fetch for p in r["partitions"])


def test_filters():
    everything = _json()
    assert {r["api"] for r in _json("--api", "fetch", "--api", "1")} == {"Fetch"}
    assert {r["api"] for r in _json("--api", "Produce", "--api", "metadata")} == {"Produce", "Metadata"}
    producer = _json("--client-id", "okw-java-p")
    assert producer and {r["client_id"] for r in producer} == {"okw-java-p"}
    assert _json("--topic", "no-such-topic") == []
    topic = vectors.truth(NAME).produced[0].topic
    on_topic = _json("--topic", topic)
    assert on_topic and {r["api"] for r in on_topic} <= {"Produce", "Fetch", "Metadata"}
    pid = everything[0]["pid"]
    assert len(_json("--pid", str(pid))) == len([r for r in everything if r["pid"] == pid])
    assert _json("--pid", "1") == []


def test_text_lines_one_per_pair():
    text = _run().splitlines()
    records = _json()
    assert len(text) == len(records)
    for line, rec in zip(text, records):
        assert f" {rec['api']} v{rec['version']} #{rec['correlation_id']}" in line
        assert rec["client_id"] in line


def test_unknown_api_name_is_a_usage_error():
    parser = argparse.ArgumentParser()
    add_trace_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--api", "nonsense"])
