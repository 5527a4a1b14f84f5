"""KIP-932 share groups from real traffic: Kafka's console share consumer reading what the Java
workload produced (tests/vectors/share, recorded by tests/vectors/record_vectors.py)."""

from __future__ import annotations

import re

from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.kafka.versions import SHARE_ACKNOWLEDGE, SHARE_FETCH
from tests.unit.kafka import vectors
from tests.workloads import GroundTruth

SHARE = vectors.VECTORS / "share"


def test_share_fetch_acquires_and_delivers_every_produced_record():
    pairs, decoder = vectors.decode(read_recording(SHARE / "java-share.rec.gz"))
    assert not [k for k in decoder.stats if k.startswith(("malformed", "truncated", "unmatched", "lost"))]
    produced = {(p.partition, p.offset): p.key for p in GroundTruth.load(SHARE / "java-share.jsonl").produced}
    console = {(int(part), int(off)): key for part, off, key in
               re.findall(r"Partition:(\d+)\tOffset:(\d+)\t(\S+)", (SHARE / "java-share.console.txt").read_text())}
    assert len(produced) == 30 and console == produced  # the consumer's own account agrees

    fetches = [p for p in pairs if p.api_key == SHARE_FETCH and p.response is not None]
    assert fetches and all(p.request.group_id and p.request.member_id for p in fetches)
    acquired, delivered = set(), {}
    for p in fetches:
        assert p.response.error_code == 0 and p.response.acquisition_lock_timeout_ms > 0
        for part in p.response.partitions:
            for rng in part.acquired:
                assert rng.delivery_count == 1
                acquired.update((part.partition, o) for o in range(rng.first_offset, rng.last_offset + 1))
            for batch in part.batches:
                for r in batch.records():
                    delivered[(part.partition, r.offset)] = r.key.decode()
    assert acquired == set(produced)
    assert delivered == produced

    acks = [p for p in pairs if p.api_key in (SHARE_FETCH, SHARE_ACKNOWLEDGE) and p.request is not None]
    acknowledged = {(part.partition, o) for p in acks for part in p.request.partitions
                    for b in part.acknowledgements for o in range(b.first_offset, b.last_offset + 1)}
    assert acknowledged and acknowledged <= set(produced)
