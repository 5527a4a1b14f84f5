"""Recorded real traffic (tests/vectors) decodes to what the client workloads themselves report.

Each vector is the recording proxy's capture of one workload run against the real broker, next to
that workload's ground truth: for every produced record its topic, partition, offset, key and
timestamp as acknowledged, for every consumed record the same as delivered.
"""

from __future__ import annotations

from collections import Counter

import pytest

from otel_kafka_ebpf.kafka import DecodeError
from otel_kafka_ebpf.kafka.versions import (
    API_VERSIONS, CONSUMER_GROUP_HEARTBEAT, FETCH, JOIN_GROUP, PRODUCE,
)
from tests.unit.kafka import vectors

ALL = vectors.names()
CODECS = ("gzip", "snappy", "lz4", "zstd")


def test_vectors_cover_the_matrix():
    clients = {entry["client"] for entry in vectors.manifest().values()}
    assert clients == {"java", "go", "confluent", "kafkapython"}
    for codec in CODECS:
        assert len(vectors.names(lambda n, e: e["options"].get("compression") == codec)) >= 3, codec
    assert len(vectors.names(lambda n, e: e["options"].get("transactional"))) >= 3
    assert len(vectors.names(lambda n, e: e["options"].get("group_protocol") == "consumer")) >= 3
    assert vectors.names(lambda n, e: e["options"]["partitions"] >= 12)


def _decoded(name):
    pairs, decoder = vectors.decode(vectors.events(name))
    return pairs, decoder, vectors.topic_registry(pairs)


def _topic(registry, topic, topic_id):
    return topic if topic is not None else registry.name(topic_id)


@pytest.mark.parametrize("name", ALL)
def test_every_frame_is_paired_and_nothing_is_malformed(name):
    pairs, decoder, _ = _decoded(name)
    stats = decoder.stats
    bad = {k: v for k, v in stats.items()
           if k.startswith(("malformed", "truncated", "unmatched", "lost")) or k.endswith(
               ("lost_frames", "skipped_bytes", "resyncs", "bad_sizes", "overlaps"))}
    assert bad == {}
    assert stats["request_frames"] == len(pairs)
    acks0 = sum(1 for p in pairs if p.response_error == "no_response")
    assert stats["response_frames"] == len(pairs) - acks0
    for pair in pairs:
        if pair.api_key in (PRODUCE, FETCH):
            assert pair.request is not None and pair.request_error is None
            assert pair.response is not None or pair.response_error == "no_response"


@pytest.mark.parametrize("name", ALL)
def test_produce_pairs_match_ground_truth(name):
    pairs, _, registry = _decoded(name)
    gt = vectors.truth(name)
    acks0 = vectors.manifest()[name]["options"].get("acks") == "0"
    decoded = []  # (topic, partition, offset or None, key, timestamp_ms, traceparent)
    for pair in pairs:
        if pair.api_key != PRODUCE:
            continue
        results = {}
        if pair.response is not None:
            for r in pair.response.partitions:
                assert r.error_code == 0
                results[(_topic(registry, r.topic, r.topic_id), r.partition)] = r
        for part in pair.request.partitions:
            topic = _topic(registry, part.topic, part.topic_id)
            assert topic == gt.produced[0].topic
            base = None if acks0 else results[(topic, part.partition)].base_offset
            for batch in part.batches:
                assert batch.magic == 2 and not batch.partial and not batch.is_control
                records = batch.records()
                assert len(records) == batch.record_count
                assert batch.first_timestamp == records[0].timestamp
                assert batch.max_timestamp == max(r.timestamp for r in records)
                assert batch.last_offset_delta == records[-1].offset_delta
                for r in records:
                    tp = dict(r.headers).get("traceparent")
                    decoded.append((topic, part.partition, None if base is None else base + r.offset_delta,
                                    r.key.decode(), r.timestamp, tp.decode() if tp else None))
    expected = [(p.topic, p.partition, p.offset, p.key, p.timestamp_ms, p.traceparent) for p in gt.produced]
    assert len(expected) == vectors.manifest()[name]["produced"] > 0
    assert Counter(decoded) == Counter(expected)


@pytest.mark.parametrize("name", ALL)
def test_fetched_batches_hold_every_consumed_record(name):
    pairs, _, registry = _decoded(name)
    gt = vectors.truth(name)
    fetched = {}  # (topic, partition, offset) -> (key, timestamp)
    high_watermarks = {}
    for pair in pairs:
        if pair.api_key != FETCH or pair.response is None:
            continue
        for part in pair.response.partitions:
            topic = _topic(registry, part.topic, part.topic_id)
            key = (part.topic_id or part.topic, part.partition)
            assert pair.fetch_offsets.get(key) is not None, "every answered partition has a known fetch offset"
            high_watermarks[(topic, part.partition)] = part.high_watermark
            for batch in part.batches:
                if batch.partial or batch.is_control:
                    continue
                for r in batch.records():
                    fetched[(topic, part.partition, r.offset)] = (r.key.decode(), r.timestamp)
    assert len(gt.consumed) == vectors.manifest()[name]["consumed"] > 0
    for c in gt.consumed:
        assert fetched.get((c.topic, c.partition, c.offset)) == (c.key, c.timestamp_ms)
        assert high_watermarks[(c.topic, c.partition)] > c.offset


@pytest.mark.parametrize("name", vectors.names(lambda n, e: e["options"].get("compression") in CODECS))
def test_compressed_vectors_use_their_codec(name):
    codec = vectors.manifest()[name]["options"]["compression"]
    pairs, _, _ = _decoded(name)
    seen = Counter(b.compression for p in pairs if p.api_key == PRODUCE
                   for part in p.request.partitions for b in part.batches)
    assert seen[codec] > 0, seen


@pytest.mark.parametrize("name", vectors.names(lambda n, e: e["options"].get("transactional")))
def test_transactional_vectors(name):
    pairs, _, _ = _decoded(name)
    produced = [b for p in pairs if p.api_key == PRODUCE for part in p.request.partitions for b in part.batches]
    assert produced and all(b.is_transactional and b.producer_id >= 0 for b in produced)
    assert any(p.request.transactional_id for p in pairs if p.api_key == PRODUCE)
    # The commit marker reaches the consumer as a control batch in a fetch response.
    control = [b for p in pairs if p.api_key == FETCH and p.response is not None
               for part in p.response.partitions for b in part.batches if b.is_control]
    assert control and all(b.record_count == 1 and b.is_transactional for b in control)


@pytest.mark.parametrize("name", vectors.names(lambda n, e: e["options"].get("group_protocol") == "consumer"))
def test_kip848_vectors_use_consumer_group_heartbeat(name):
    pairs, _, _ = _decoded(name)
    apis = Counter(p.api_key for p in pairs)
    assert apis[CONSUMER_GROUP_HEARTBEAT] > 0
    assert apis[JOIN_GROUP] == 0


@pytest.mark.parametrize("name", vectors.names(lambda n, e: n.endswith("-plain")))
def test_api_versions_names_the_client_software(name):
    pairs, _, _ = _decoded(name)
    requests = [p.request for p in pairs if p.api_key == API_VERSIONS and p.request is not None]
    responses = [p.response for p in pairs if p.api_key == API_VERSIONS and p.response is not None]
    answered = [r for r in responses if r.error_code == 0]
    assert answered and all(len(r.api_keys) > 50 for r in answered)
    # a probe above the broker's range is answered in v0 with UNSUPPORTED_VERSION and its own range
    assert all(r.error_code == 35 and r.api_keys[0][:2] == (API_VERSIONS, 0)
               for r in responses if r.error_code != 0)
    names = {r.client_software_name for r in requests}
    expected = {"java": "apache-kafka-java", "go": "kgo", "confluent": "confluent-kafka-python",
                "kafkapython": "kafka-python"}[vectors.manifest()[name]["client"]]
    assert expected in names, names


def test_stated_ranges_cover_what_the_recorded_broker_advertised():
    """The ApiVersions answers of the real broker in the vectors (the live check is in
    tests/integration/test_decoder_live.py)."""
    from otel_kafka_ebpf.kafka import SUPPORTED

    pairs, _, _ = _decoded("java-plain")
    response = next(p.response for p in pairs if p.api_key == API_VERSIONS and p.response is not None)
    advertised = {a.api_key: (a.min_version, a.max_version) for a in response.api_keys}
    for key, (lo, hi) in SUPPORTED.items():
        assert key in advertised
        assert lo <= advertised[key][0] and advertised[key][1] <= hi, (key, (lo, hi), advertised[key])


@pytest.mark.parametrize("name", vectors.names(lambda n, e: e["options"].get("concurrent")))
def test_incremental_fetch_sessions_keep_offsets_of_unlisted_partitions(name):
    """A consumer fetching while a producer writes uses KIP-227 sessions: later requests list only
    the partitions whose fetch state changed, and the fetch offset of a partition the response
    answers without the request listing it comes from the session."""
    pairs, _, _ = _decoded(name)
    fetches = [p for p in pairs if p.api_key == FETCH and p.response is not None]
    incremental = [p for p in fetches if p.request.session_epoch > 0]
    assert incremental and all(p.request.session_id != 0 for p in incremental)
    partitions = vectors.manifest()[name]["options"]["partitions"]
    first = next(p for p in fetches if p.request.session_epoch == 0)
    assert len(first.request.partitions) == partitions
    assert first.response.session_id == incremental[0].request.session_id
    from_session = 0
    for p in incremental:
        listed = {(q.topic_id or q.topic, q.partition) for q in p.request.partitions}
        assert len(listed) < partitions or not p.response.partitions
        for part in p.response.partitions:
            key = (part.topic_id or part.topic, part.partition)
            assert key in p.fetch_offsets
            from_session += key not in listed
    assert from_session > 0


@pytest.mark.parametrize("name", ["java-many-12p", "confluent-gzip-3p", "go-zstd-3p"])
def test_a_fetch_cut_mid_batch_ends_with_a_partial_batch(name):
    """Brokers stop a fetch response at max_bytes, mid-batch: the last batch is recognised as partial
    (header read, records not), from real record bytes cut at every length."""
    from otel_kafka_ebpf.kafka.records import BATCH_HEADER_SIZE, read_batches

    pairs, _, _ = _decoded(name)
    part = next(q for p in pairs if p.api_key == FETCH and p.response is not None
                for q in p.response.partitions if q.batches)
    whole = bytes(b"".join(bytes(b.data) for b in part.batches))
    complete = read_batches(memoryview(whole)).batches
    assert [b.base_offset for b in complete] == [b.base_offset for b in part.batches]
    ends = set()
    pos = 0
    for b in complete:
        pos += len(b.data)
        ends.add(pos)
    for cut in range(len(whole)):
        got = read_batches(memoryview(whole[:cut])).batches
        done = sum(1 for e in ends if e <= cut)
        assert [b.partial for b in got[:done]] == [False] * done
        start = max([e for e in ends if e <= cut], default=0)
        if cut - start >= BATCH_HEADER_SIZE:
            assert len(got) == done + 1 and got[-1].partial
            assert got[-1][:13] == complete[done][:13]  # every header field, read from the cut batch
            with pytest.raises(DecodeError):
                got[-1].records()
        else:
            assert len(got) == done
