"""`run` under sustained load, as a user runs it: Kafka's ProducerPerformance (one record per batch and per
Produce request: batch.size=1, linger.ms=0, acks=1) beside the agent, which exports OTLP/gRPC to a Collector
writing what it receives to files. With a 1 MiB ring buffer the events go round it a dozen times and more.

Across the wraps: the agent stays alive and exits cleanly, it loses no event and reports no gap, the decoder
reports no problem (no malformed, truncated, lost or unmatched frame: every request paired with its response),
the Collector receives one `send` span per request, and the stream it recorded is in step frame by frame
(issue 14: a run that died mid-hunt ~91,000 requests in, after the stream had lost frame sync)."""

from __future__ import annotations

import os

import pytest

from tests.testbed.run_load import frames_out_of_step, run_load

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

RING_MB = 1
RECORDS = 50_000
RATE = 2_500  # requests/s: about 20 s; well within what the agent digests on one core


def test_run_exports_every_request_across_many_ring_wraps(kafka_broker, collector_factory, tmp_path):
    collector = collector_factory("file-only.yaml")
    recording = tmp_path / "load.okerec"
    r = run_load(kafka_broker, collector, records=RECORDS, throughput=RATE, ringbuf_mb=RING_MB, record_to=recording)
    err = r.agent_stderr[-3000:]
    assert r.agent_alive and r.agent_exit == 0, err
    assert "Traceback" not in r.agent_stderr and "internal error" not in r.agent_stderr, err
    assert r.records == RECORDS, r
    capture = r.capture
    assert capture, err
    assert r.ring_wraps(RING_MB << 20) >= 10, capture  # the load did go round the ring, many times
    # A lost event is the agent falling behind the producer (a machine too busy for this rate), not the
    # decoder: said apart so that a failure points at the right cause.
    assert capture["lost_events"] == 0 and capture["gaps"] == 0, f"the ring buffer overflowed: {capture}\n{err}"
    assert r.decoder_problems == {}, r.decoder_problems
    assert r.health.get("otel_kafka_ebpf.capture.lost_events") == 0, r.health
    assert r.health.get("otel_kafka_ebpf.capture.gap_bytes") == 0, r.health
    assert r.send_spans == r.records, (r.send_spans, r.records, err)
    problems, counters = frames_out_of_step(recording)
    assert problems == [], problems
    assert counters["request_frames"] == counters["response_frames"] >= RECORDS, counters
