"""Spans from the recorded vectors of the four real clients, checked against each client's ground truth.

For every produced batch there is one `send` span (PRODUCER); for every batch a consumer received
there is one `poll` span (CONSUMER) in the same trace, a child of that `send` span; offsets, counts,
client ids, groups and (where the records carry one) the W3C traceparent links are the clients' own.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from otel_kafka_ebpf.agent import Agent
from otel_kafka_ebpf.config import load_config
from otel_kafka_ebpf.correlate.batches import MAX_LINKS
from otel_kafka_ebpf.correlate.ids import batch_ids
from tests.testbed.otlp import InMemoryTransport
from tests.unit.kafka import vectors

SEND, POLL = 4, 5  # SpanKind PRODUCER, CONSUMER


def export(name: str, environ: dict | None = None, **agent_settings):
    cfg = load_config(None, {"agent": agent_settings}, environ=environ or {})
    transport = InMemoryTransport()
    agent = Agent(cfg, live=False, transport=transport)
    agent.run(vectors.events(name))
    agent.close()
    return transport


def client_vectors():
    return vectors.names(lambda n, e: e["client"] != "console-share")


def covering(spans, partition: int, offset: int):
    return [s for s in spans if s.partition == partition and s.first_offset <= offset <= s.last_offset]


@pytest.mark.parametrize("name", client_vectors())
def test_send_and_poll_spans_match_the_ground_truth(name):
    gt = vectors.truth(name)
    spans = export(name).spans()
    sends = [s for s in spans if s.kind == SEND]
    polls = [s for s in spans if s.kind == POLL]
    acks0 = vectors.manifest()[name]["options"].get("acks") == "0"
    topic = gt.produced[0].topic
    assert {s.topic for s in spans} == {topic}
    assert all(s.name == f"send {topic}" for s in sends) and all(s.name == f"poll {topic}" for s in polls)
    assert {s.attributes["messaging.client.id"] for s in sends} == {p.client_id for p in gt.produced}
    assert {s.attributes["messaging.client.id"] for s in polls} == {c.client_id for c in gt.consumed}
    assert {s.attributes.get("messaging.consumer.group.name") for s in polls} == {c.group for c in gt.consumed}
    for s in spans:
        assert s.attributes["messaging.system"] == "kafka" and s.end_ns >= s.start_ns > 0
        assert s.attributes["server.port"] > 0 and s.attributes["otel_kafka_ebpf.cluster.id"]
    assert sum(s.attributes["messaging.batch.message_count"] for s in sends) == len(gt.produced)

    send_by_id = {(s.trace_id, s.span_id): s for s in sends}
    for c in gt.consumed:
        (poll,) = covering(polls, c.partition, c.offset)
        if not acks0:  # with acks=0 the producer never learns its offsets: its spans start their own traces
            send = send_by_id[(poll.trace_id, poll.parent_span_id)]
            assert send.first_offset == poll.first_offset and send.partition == c.partition
            assert send.start_ns < poll.start_ns
    if acks0:
        assert all(s.attributes["otel_kafka_ebpf.unlinked"] == "acks=0" for s in sends)
    else:
        for p in gt.produced:
            (send,) = covering(sends, p.partition, p.offset)
            assert send.start_ns <= p.ack_ns and (send.end_ns - send.start_ns) < 10e9
    assert sum(s.attributes["messaging.batch.message_count"] for s in polls) == len(gt.consumed)


@pytest.mark.parametrize("name", vectors.names(lambda n, e: e["client"] != "console-share"
                                               and n.endswith("-plain")))
def test_poll_and_send_spans_link_to_the_records_traceparent(name):
    gt = vectors.truth(name)
    spans = export(name).spans()
    wanted_send = defaultdict(set)
    for p in gt.produced:
        if p.traceparent:
            tid, sid = p.traceparent.split("-")[1:3]
            wanted_send[(p.partition, p.offset)].add((tid, sid))
    if not wanted_send:
        pytest.skip(f"{name} was recorded without --headers")
    for s in spans:
        expected = set()
        for o in range(s.first_offset, s.last_offset + 1):
            expected |= wanted_send.get((s.partition, o), set())
        assert set(s.links) <= expected and len(s.links) == min(len(expected), MAX_LINKS), s.name


def test_trace_ids_are_the_documented_derivation():
    name = "go-plain"
    spans = export(name).spans()
    send = next(s for s in spans if s.kind == SEND)
    cluster = send.attributes["otel_kafka_ebpf.cluster.id"]
    trace_id, span_id = batch_ids(cluster, send.topic, send.partition, send.first_offset)
    assert (send.trace_id, send.span_id) == (trace_id.hex(), span_id.hex())


def test_replay_is_deterministic():
    a = export("java-lz4-3p").spans()
    b = export("java-lz4-3p").spans()
    assert [(s.trace_id, s.span_id, s.parent_span_id, s.start_ns, s.end_ns, s.attributes) for s in a] == \
           [(s.trace_id, s.span_id, s.parent_span_id, s.start_ns, s.end_ns, s.attributes) for s in b]


@pytest.mark.parametrize("ratio", ["0.5", "0.1"])
def test_ratio_sampling_keeps_whole_traces(ratio):
    everything = export("go-many-12p").spans()
    sampled = export("go-many-12p", {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio}).spans()
    assert 0 < len(sampled) < len(everything)
    kept = {s.trace_id for s in sampled}
    # a trace is kept or dropped whole: the send span and every poll span of a batch together
    assert [s for s in everything if s.trace_id in kept] == sampled or \
        sorted((s.trace_id, s.span_id) for s in everything if s.trace_id in kept) == \
        sorted((s.trace_id, s.span_id) for s in sampled)
    bound = float(ratio) * 2 ** 64
    assert all(int(t[16:], 16) < bound for t in kept)


def test_sampler_off_exports_no_spans_but_metrics():
    transport = export("go-plain", {"OTEL_TRACES_SAMPLER": "always_off"})
    assert transport.spans() == [] and transport.metrics()


def test_export_requests_are_never_larger_than_the_span_queue():
    """OTEL_BSP_MAX_QUEUE_SIZE below the batch size: each request holds at most the queue's size, so that
    requests can be queued at all (a larger one would be dropped whole, every span of it)."""
    cfg = load_config(None, {}, environ={"OTEL_BSP_MAX_QUEUE_SIZE": "3", "OTEL_BSP_SCHEDULE_DELAY": "600000"})
    agent = Agent(cfg, live=False, transport=InMemoryTransport())
    sizes, submit = [], agent.exporter.submit

    def counted(signal, payload, items):
        if signal == "traces":
            sizes.append(items)
        return submit(signal, payload, items)

    agent.exporter.submit = counted
    agent.run(vectors.events("go-many-12p"))
    agent.close()
    assert sum(sizes) == 24 and max(sizes) <= 3
