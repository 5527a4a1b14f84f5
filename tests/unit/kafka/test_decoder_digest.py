"""The digest capture on recorded traffic: record batch headers without their records decode to the
same pairs as whole frames (every field but the records themselves), skipped ranges are exactly the
records, SASL credentials are never copied, and losses in a digest stream never mislead the decoder.

The digests are made by `layouts.digest_streams`, the Python twin of the kernel's walk
(tests/integration/test_capture_digest.py holds the kernel to the same twin).
"""

from __future__ import annotations

import functools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_kafka_ebpf.capture import layouts
from otel_kafka_ebpf.capture.streams import (
    ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)
from otel_kafka_ebpf.kafka import DecodeError, KafkaStreamDecoder
from otel_kafka_ebpf.kafka.records import RecordBatch, RecordsNotCaptured
from otel_kafka_ebpf.kafka.versions import FETCH, PRODUCE
from tests.unit.kafka import vectors

ALL = vectors.names()
PLAIN = vectors.names(lambda n, e: n.endswith("-plain"))  # uncompressed, records with traceparent headers


def _norm(obj):
    """A comparable form of a decoded message: a record batch by its header (not its bytes)."""
    if isinstance(obj, RecordBatch):
        return ("RecordBatch", obj[:14])
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, dict):
        return tuple(sorted((k, _norm(v)) for k, v in obj.items()))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return (type(obj).__name__, tuple(_norm(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return tuple(_norm(x) for x in obj)
    return obj


@functools.lru_cache(maxsize=None)
def _digest(name: str, mode: str = "digest", record_prefix: int = 0, fused: bool = False) -> tuple:
    return tuple(layouts.digest_streams(vectors.events(name), mode, record_prefix, fused=fused))


def _batches(pairs):
    """Every batch of every Produce request and Fetch response, in order."""
    for p in pairs:
        if p.api_key == PRODUCE and p.request is not None:
            yield from (b for part in p.request.partitions for b in part.batches)
        elif p.api_key == FETCH and p.response is not None:
            yield from (b for part in p.response.partitions for b in part.batches)


@pytest.mark.parametrize("fused", [False, True], ids=["runs-and-gaps", "one-event-per-frame"])
@pytest.mark.parametrize("name", ALL)
def test_digest_decodes_to_the_same_pairs(name, fused):
    """Both forms of a digest: copied runs and StreamGap skips, or (as the live capture sends them)
    one StreamData per frame that says where its skips are."""
    full, _ = vectors.decode(vectors.events(name))
    digest, decoder = vectors.decode(_digest(name, fused=fused))
    assert [_norm(p) for p in digest] == [_norm(p) for p in full]
    bad = {k: v for k, v in decoder.stats.items() if k.startswith(("malformed", "truncated", "unmatched", "lost"))
           or k.endswith(("lost_frames", "_skipped_bytes", "resyncs", "bad_sizes", "overlaps"))}
    assert bad == {}
    assert decoder.stats["gap_bytes"] == 0


@pytest.mark.parametrize("name", ALL)
def test_skipped_ranges_are_exactly_the_records(name):
    full, _ = vectors.decode(vectors.events(name))
    digest, decoder = vectors.decode(_digest(name))
    pairs = list(zip(_batches(full), _batches(digest), strict=True))
    assert pairs, "every vector carries record batches"
    for whole, head in pairs:
        assert head.skipped == len(whole.data) - 61
        assert bytes(head.data) == bytes(whole.data[:61])
    assert decoder.stats["skipped_on_purpose_bytes"] == sum(h.skipped for _, h in pairs)


@pytest.mark.parametrize("name", ALL)
def test_only_headers_cross_over(name):
    """Copied bytes are frame structure: no key or value of any record is among them."""
    copied = b"".join(e.data for e in _digest(name) if isinstance(e, StreamData))
    full, _ = vectors.decode(vectors.events(name))
    for batch in _batches(full):
        if batch.compression == "none" and not batch.partial:
            for r in batch.records():
                if r.value and len(r.value) >= 16:
                    assert r.value not in copied


def test_records_of_a_digest_are_not_captured():
    digest, _ = vectors.decode(_digest("go-plain"))
    batch = next(_batches(digest))
    with pytest.raises(RecordsNotCaptured):
        batch.records()
    with pytest.raises(RecordsNotCaptured):
        batch.first_records()
    assert issubclass(RecordsNotCaptured, DecodeError)


@pytest.mark.parametrize("name", PLAIN)
def test_record_prefix_gives_the_first_records_with_their_headers(name):
    full, _ = vectors.decode(vectors.events(name))
    digest, _ = vectors.decode(_digest(name, "digest", 512))
    seen = 0
    for whole, head in zip(_batches(full), _batches(digest), strict=True):
        if whole.partial or whole.is_control:
            continue
        records = whole.records()
        first = head.first_records()
        assert 1 <= len(first) <= len(records)
        assert first == records[:len(first)]
        assert len(head.data) <= 61 + 512
        seen += sum(1 for r in first if dict(r.headers).get("traceparent"))
    assert seen > 0, "the plain vectors carry traceparent headers"


def test_full_mode_copies_everything_but_sasl():
    for name in ("java-plain", "go-tx"):
        assert [e for e in _digest(name, "full") if isinstance(e, StreamGap)] == []


# --- SASL --------------------------------------------------------------------------------------

PASSWORD = b"s3cr3t-Pa55w0rd-never-copied"


def _request(api_key: int, version: int, corr: int, body: bytes, client_id: bytes = b"sasl-client",
             flexible: bool = False) -> bytes:
    head = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id + (b"\0" if flexible else b"")
    return struct.pack(">i", len(head) + len(body)) + head + body


def _response(corr: int, body: bytes, flexible: bool = False) -> bytes:
    head = struct.pack(">i", corr) + (b"\0" if flexible else b"")
    return struct.pack(">i", len(head) + len(body)) + head + body


def _sasl_conversation(handshake_version: int) -> tuple[bytes, bytes]:
    """(client -> broker, broker -> client) of an ApiVersions, a SASL/PLAIN login, then a Metadata."""
    token = b"\0user\0" + PASSWORD
    send = _request(18, 0, 1, b"")
    recv = _response(1, struct.pack(">hi", 0, 1) + struct.pack(">hhh", 17, 0, 1))
    send += _request(17, handshake_version, 2, struct.pack(">h", 5) + b"PLAIN")
    recv += _response(2, struct.pack(">hi", 0, 1) + struct.pack(">h", 5) + b"PLAIN")
    if handshake_version == 0:  # raw tokens: no Kafka header at all
        send += struct.pack(">i", len(token)) + token
        recv += struct.pack(">i", 0)
    else:
        body = b"\0" + bytes([len(token) + 1]) + token + b"\0"  # compact bytes, tagged fields
        send += _request(36, 2, 3, body, flexible=True)
        recv += _response(3, struct.pack(">h", 0) + b"\0" + b"\x01" + struct.pack(">q", 0) + b"\0", flexible=True)
    send += _request(3, 0, 4, struct.pack(">i", 0))
    recv += _response(4, struct.pack(">i", 0) + struct.pack(">i", 0))
    return send, recv


def _events(send: bytes, recv: bytes) -> list:
    opened = ConnectionOpened(1, 0, 10, 10, "app", 0, 0, "127.0.0.1", 5000, "127.0.0.1", 9092, Role.CLIENT)
    return [opened, StreamData(1, Direction.SEND, 1, 0, send), StreamData(1, Direction.RECV, 2, 0, recv)]


@pytest.mark.parametrize("mode", ["digest", "full"])
@pytest.mark.parametrize("handshake_version", [0, 1])
def test_sasl_credentials_are_never_copied(mode, handshake_version):
    send, recv = _sasl_conversation(handshake_version)
    assert PASSWORD in send
    events = layouts.digest_streams(_events(send, recv), mode)
    copied = b"".join(e.data for e in events if isinstance(e, StreamData))
    assert PASSWORD not in copied and b"user" not in copied
    assert {e.reason for e in events if isinstance(e, StreamGap)} == {GapReason.SASL}
    decoder = KafkaStreamDecoder()
    pairs = list(decoder.feed_all(events)) + decoder.finish()
    assert [(p.api_key, p.client_id) for p in pairs][-1] == (3, "sasl-client")
    assert [p.api_key for p in pairs if p.response is not None][-1] == 3, "Metadata after the login is paired"
    assert not [k for k in decoder.stats if k.startswith(("malformed", "truncated"))]


# --- losses in a digest stream -----------------------------------------------------------------

def _connections() -> list[tuple[str, int]]:
    out = []
    for name in ("java-zstd-3p", "go-plain", "confluent-tx", "kafkapython-gzip-3p", "go-live-6p"):
        pairs, _ = vectors.decode(vectors.events(name))
        out.extend((name, c) for c in sorted({p.conn_id for p in pairs if p.api_key in (PRODUCE, FETCH)}))
    return out


CONNECTIONS = _connections()


@functools.lru_cache(maxsize=None)
def _conn_digest(name: str, conn_id: int) -> tuple:
    return tuple(e for e in _digest(name) if isinstance(e, (StreamData, StreamGap)) and e.conn_id == conn_id)


@functools.lru_cache(maxsize=None)
def _reference(name: str, conn_id: int) -> dict:
    pairs, _ = vectors.decode(e for e in vectors.events(name) if e.conn_id == conn_id)
    return {p.correlation_id: p for p in pairs}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conn=st.sampled_from(CONNECTIONS), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4))
def test_losses_in_a_digest_never_mislead_the_decoder(conn, seed, n):
    """Events of a digest stream lost (reported as ring-buffer gaps of their exact length): nothing
    raises, and every pair decoded is the gap-free decode's."""
    rng = random.Random(seed)
    events = list(_conn_digest(*conn))
    for _ in range(n):
        i = rng.randrange(len(events))
        e = events[i]
        length = len(e.data) if isinstance(e, StreamData) else e.length
        events[i] = StreamGap(e.conn_id, e.direction, e.ts_ns, e.offset, length, GapReason.RINGBUF_FULL)
    decoder = KafkaStreamDecoder()
    pairs = list(decoder.feed_all(events)) + decoder.finish()
    reference = _reference(*conn)
    for p in pairs:
        ref = reference[p.correlation_id]
        assert (p.api_key, p.api_version, p.client_id) == (ref.api_key, ref.api_version, ref.client_id)
        if p.request is not None:
            assert _norm(p.request) == _norm(ref.request)
        if p.response is not None:
            assert _norm(p.response) == _norm(ref.response)


def test_a_misplaced_skip_is_malformed_not_an_exception():
    """A skipped range where no record batch is (a digest that does not match its frame) makes the
    frame malformed; the decoder goes on."""
    events = list(_digest("go-plain"))
    i = next(i for i, e in enumerate(events) if isinstance(e, StreamGap))
    gap = events[i]
    prev = events[i - 1]
    # move the first skip 5 bytes earlier inside the copied run before it
    events[i - 1] = StreamData(prev.conn_id, prev.direction, prev.ts_ns, prev.offset, prev.data[:-5], prev.frame_start)
    events[i] = StreamGap(gap.conn_id, gap.direction, gap.ts_ns, gap.offset - 5, gap.length, gap.reason)
    events.insert(i + 1, StreamData(gap.conn_id, gap.direction, gap.ts_ns, gap.offset - 5 + gap.length,
                                    prev.data[-5:]))
    # the stream is now inconsistent at that spot; the decoder reports it and keeps going
    decoder = KafkaStreamDecoder()
    pairs = list(decoder.feed_all(events)) + decoder.finish()
    assert any(k.startswith("malformed") for k in decoder.stats)
    assert sum(1 for p in pairs if p.response is not None) >= len(vectors.decode(vectors.events("go-plain"))[0]) - 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["java-plain", "go-live-6p", "confluent-tx", "kafkapython-many-12p"]),
       seed=st.integers(0, 2**32 - 1))
def test_events_cut_anywhere_decode_the_same(name, seed):
    """The kernel cuts a frame's digest into events where its buffers fill or syscalls end: a copied
    run or a skipped range may be split between two events. The pairs do not change."""
    rng = random.Random(seed)
    cut = []
    for e in _digest(name):
        if isinstance(e, StreamGap) and e.length > 1 and rng.random() < 0.5:
            k = rng.randrange(1, e.length)
            cut += [e, StreamGap(e.conn_id, e.direction, e.ts_ns, e.offset + k, e.length - k, e.reason)]
            cut[-2] = StreamGap(e.conn_id, e.direction, e.ts_ns, e.offset, k, e.reason)
        elif isinstance(e, StreamData) and len(e.data) > 1 and rng.random() < 0.5:
            k = rng.randrange(1, len(e.data))
            cut += [StreamData(e.conn_id, e.direction, e.ts_ns, e.offset, e.data[:k], e.frame_start, e.last_ts_ns),
                    StreamData(e.conn_id, e.direction, e.ts_ns, e.offset + k, e.data[k:], False, e.last_ts_ns)]
        else:
            cut.append(e)
    digest, decoder = vectors.decode(cut)
    full, _ = vectors.decode(vectors.events(name))
    assert [_norm(p) for p in digest] == [_norm(p) for p in full]
    assert not [k for k in decoder.stats if k.startswith("malformed")]
