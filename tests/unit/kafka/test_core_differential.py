"""The compiled core (otel_kafka_ebpf._core through fastpath.CoreStreamDecoder) against its oracle, the Python
decoder: the same pairs, field for field and in the same order, and the same counters, on every recorded vector
as captured, as the digest capture sends it (one event per frame with its skips), cut into chunks of any size,
with gaps, and on garbage. Any bytes give pairs and counters, never an exception, and the core's buffered bytes
stay within one frame.
"""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_kafka_ebpf import fastpath
from otel_kafka_ebpf.capture import layouts
from otel_kafka_ebpf.capture.streams import ConnectionClosed, Direction, GapReason, StreamData, StreamGap
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from tests.unit.kafka import vectors

pytestmark = pytest.mark.skipif(fastpath._core is None, reason=fastpath.CORE_MISSING or "")

ALL = vectors.names()


def _norm(obj):
    """A comparable form that keeps every field and every value's type (a batch's bytes are a memoryview in
    both: of the frame in Python, of a copy of the batch's captured bytes in the core)."""
    if isinstance(obj, (memoryview, bytes, bytearray)):
        return (type(obj).__name__, bytes(obj))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted(((repr(k), _norm(v)) for k, v in obj.items()))))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return (type(obj).__name__, tuple(_norm(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_norm(x) for x in obj))
    return (type(obj).__name__, obj)


def _both(events) -> tuple[list, list, object, object]:
    oracle, core = KafkaStreamDecoder(), fastpath.CoreStreamDecoder()
    expected, got = [], []
    for event in events:
        expected.extend(oracle.feed(event))
        got.extend(core.feed(event))
    expected.extend(oracle.finish())
    got.extend(core.finish())
    return expected, got, oracle, core


def _assert_same(events) -> fastpath.CoreStreamDecoder:
    expected, got, oracle, core = _both(events)
    assert [_norm(p) for p in got] == [_norm(p) for p in expected]
    assert core.summary() == oracle.summary()
    return core


@functools.lru_cache(maxsize=None)
def _digest(name: str) -> tuple:
    return tuple(layouts.digest_streams(vectors.events(name), "digest", 0, fused=True))


@pytest.mark.parametrize("name", ALL)
def test_every_vector_gives_the_same_pairs(name):
    core = _assert_same(vectors.events(name))
    assert core.handed_over == 0  # recordings of the proxy are plain: the core keeps every connection


@pytest.mark.parametrize("name", ALL)
def test_every_digest_gives_the_same_pairs(name):
    core = _assert_same(_digest(name))
    assert core.handed_over == 0


def _rechunk(events, sizes: list[int]) -> list:
    """Each StreamData cut into pieces of the given sizes (cycled), in the same order."""
    out = []
    k = 0
    for e in events:
        if type(e) is not StreamData or e.skips or len(e.data) < 2:
            out.append(e)
            continue
        pos = 0
        while pos < len(e.data):
            n = sizes[k % len(sizes)]
            k += 1
            piece = e.data[pos:pos + n]
            out.append(StreamData(e.conn_id, e.direction, e.ts_ns + pos, e.offset + pos, piece, False,
                                  e.end_ts_ns))
            pos += len(piece)
    return out


@pytest.mark.parametrize("sizes", [[1], [3], [7, 1, 4096], [100], [5000, 2]], ids=str)
@pytest.mark.parametrize("name", ["java-plain", "confluent-many-12p", "go-live-6p", "kafkapython-tx"])
def test_frames_cut_anywhere_give_the_same_pairs(name, sizes):
    _assert_same(_rechunk(vectors.events(name), sizes))


def _with_loss(events, which: int, at: float, length: int, reason: GapReason) -> list:
    """The `which`-th StreamData loses `length` bytes at `at` of its length (a StreamGap in their place)."""
    out = []
    k = 0
    for e in events:
        if type(e) is StreamData and not e.skips and len(e.data) > length:
            if k == which:
                cut = min(int(len(e.data) * at), len(e.data) - length)
                if cut:
                    out.append(StreamData(e.conn_id, e.direction, e.ts_ns, e.offset, e.data[:cut], False, e.last_ts_ns))
                out.append(StreamGap(e.conn_id, e.direction, e.ts_ns, e.offset + cut, length, reason))
                out.append(StreamData(e.conn_id, e.direction, e.ts_ns, e.offset + cut + length,
                                      e.data[cut + length:], False, e.last_ts_ns))
                k += 1
                continue
            k += 1
        out.append(e)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL), which=st.integers(0, 60), at=st.floats(0, 1), length=st.integers(1, 64),
       reason=st.sampled_from([GapReason.RINGBUF_FULL, GapReason.BUDGET, GapReason.UNKNOWN_START]),
       sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=4))
def test_gaps_hand_the_connection_over_without_changing_a_pair(name, which, at, length, reason, sizes):
    _assert_same(_rechunk(_with_loss(vectors.events(name), which, at, length, reason), sizes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(ALL), which=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 1 << 16),
                                                                                       st.integers(1, 255)),
                                                                             min_size=1, max_size=6))
def test_damaged_bytes_give_the_same_pairs(name, which, flips):
    """Bytes changed inside one captured event (sizes, heads, lengths, batch headers, anything)."""
    events = list(vectors.events(name))
    data_at = [i for i, e in enumerate(events) if type(e) is StreamData and e.data]
    i = data_at[which % len(data_at)]
    e = events[i]
    data = bytearray(e.data)
    for pos, x in flips:
        data[pos % len(data)] ^= x
    events[i] = StreamData(e.conn_id, e.direction, e.ts_ns, e.offset, bytes(data), e.frame_start, e.last_ts_ns)
    _assert_same(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Direction.SEND, Direction.RECV]), st.binary(max_size=300),
                          st.integers(0, 3)), max_size=12))
def test_any_bytes_give_pairs_and_counters_never_an_exception(chunks):
    """Garbage, and garbage that starts like Kafka (a plausible size and request head)."""
    offsets = {Direction.SEND: 0, Direction.RECV: 0}
    events = []
    for direction, data, shape in chunks:
        if shape == 1:  # a size that fits, then the bytes
            data = len(data).to_bytes(4, "big") + data
        elif shape == 2:  # a Produce v9 head with that size
            data = (len(data) + 14).to_bytes(4, "big") + b"\x00\x00\x00\x09" + bytes(4) + b"\xff\xff\x00" + data
        elif shape == 3 and data:  # a skip inside
            events.append(StreamData(7, direction, 1, offsets[direction], data, True, None,
                                     ((min(4, len(data)), 10),), GapReason.RECORDS_SKIPPED))
            offsets[direction] += len(data) + 10
            continue
        events.append(StreamData(7, direction, 1, offsets[direction], data))
        offsets[direction] += len(data)
    events.append(ConnectionClosed(7, 2))
    _assert_same(events)


def test_a_huge_declared_frame_is_buffered_only_as_far_as_it_came():
    """Memory under garbage: a size prefix announcing 200 MiB, followed by 2 MiB of noise in 16 KiB events,
    costs the bytes that came (as in the Python splitter), and a bad size hands the connection over at once."""
    rng = random.Random(5)
    core = fastpath.CoreStreamDecoder()
    offset = 0
    first = (200 << 20).to_bytes(4, "big") + bytes(rng.getrandbits(8) for _ in range(16380))
    for i in range(128):
        data = first if i == 0 else rng.randbytes(16384)
        assert core.feed(StreamData(9, Direction.RECV, i, offset, data)) == []
        offset += len(data)
    assert core.core.buffered_bytes() == 128 * 16384
    core.feed(StreamData(10, Direction.RECV, 0, 0, b"\x7f\xff\xff\xff" + bytes(100)))  # beyond MAX_FRAME
    assert core.handed_over == 1 and core.core.buffered_bytes() == 128 * 16384
    core.feed(ConnectionClosed(9, 1))
    assert core.core.buffered_bytes() == 0


def test_the_switch():
    decoder, note = fastpath.make_decoder("python")
    assert isinstance(decoder, KafkaStreamDecoder) and note is None
    decoder, note = fastpath.make_decoder("auto")
    assert isinstance(decoder, fastpath.CoreStreamDecoder) and note is None
    with pytest.raises(ValueError):
        fastpath.make_decoder("fast")
