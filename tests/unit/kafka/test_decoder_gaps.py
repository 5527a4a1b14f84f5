"""Gaps, truncation and corruption in real recorded streams: the decoder never raises, never hangs,
and everything it decodes after a gap is what the gap-free decode of the same bytes says.

The streams are real client connections from tests/vectors; gaps are cut into them the way the
capture reports them (StreamGap of exact length at an exact offset), in either direction.
"""

from __future__ import annotations

import functools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_kafka_ebpf.capture.streams import Direction, GapReason, Role, StreamData, StreamGap
from otel_kafka_ebpf.kafka import NEED_DATA, KafkaConnection
from otel_kafka_ebpf.kafka.frames import ACCEPT, MAX_WAITING, NEED_MORE, REJECT, FrameLost, FrameSplitter
from otel_kafka_ebpf.kafka.versions import FETCH, PRODUCE
from tests.unit.kafka import vectors


def _connections() -> list[tuple[str, int]]:
    """Connections that carry Produce or Fetch, one producer and one consumer per client and codec."""
    out = []
    for name in sorted(vectors.names(lambda n, e: "3p" in n or n.endswith(("-tx", "-live-6p")))):
        pairs, _ = vectors.decode(vectors.events(name))
        conns = {}
        for p in pairs:
            if p.api_key in (PRODUCE, FETCH):
                conns.setdefault(p.api_key, p.conn_id)
        out.extend((name, c) for c in sorted(set(conns.values())))
    return out


CONNECTIONS = _connections()


@functools.lru_cache(maxsize=None)
def _conn_events(name: str, conn_id: int) -> tuple[StreamData, ...]:
    return tuple(e for e in vectors.events(name) if isinstance(e, StreamData) and e.conn_id == conn_id)


def _run(events) -> tuple[list, KafkaConnection]:
    conn = KafkaConnection(1, Role.CLIENT)
    pairs = []
    for e in events:
        if isinstance(e, StreamData):
            conn.feed_data(e.direction, e.offset, e.data, e.ts_ns)
        else:
            conn.feed_gap(e.direction, e.offset, e.length, e.ts_ns)
        while (ev := conn.next_event()) is not NEED_DATA:
            pairs.append(ev)
    conn.close(0)
    while (ev := conn.next_event()) is not NEED_DATA:
        pairs.append(ev)
    return pairs, conn


@functools.lru_cache(maxsize=None)
def _reference(name: str, conn_id: int) -> dict[int, object]:
    pairs, conn = _run(_conn_events(name, conn_id))
    assert all(p.request_error in (None, "unsupported") and p.response_error in (None, "unsupported", "no_response")
               for p in pairs)
    return {p.correlation_id: p for p in pairs}


def _cut(events, gaps: dict[Direction, list[tuple[int, int]]], chunk: int):
    """Re-chunk the recorded events and replace the bytes inside `gaps` by StreamGap events."""
    out = []
    for e in events:
        spans = sorted(gaps.get(e.direction, ()))
        for start in range(0, len(e.data), chunk):
            piece = e.data[start:start + chunk]
            pos = e.offset + start
            end = pos + len(piece)
            while pos < end:
                inside = next(((s, t) for s, t in spans if s <= pos < t), None)
                if inside is not None:
                    stop = min(end, inside[1])
                    out.append(StreamGap(e.conn_id, e.direction, e.ts_ns, pos, stop - pos, GapReason.BUDGET))
                else:
                    stop = min([end] + [s for s, _ in spans if s > pos])
                    out.append(StreamData(e.conn_id, e.direction, e.ts_ns, pos,
                                          piece[pos - e.offset - start:stop - e.offset - start]))
                pos = stop
    return out


def _assert_consistent(pairs, reference):
    """Whatever was decoded equals the gap-free decode of the same request/response."""
    for p in pairs:
        ref = reference[p.correlation_id]
        assert (p.api_key, p.api_version, p.client_id) == (ref.api_key, ref.api_version, ref.client_id)
        if p.request is not None:
            assert p.request == ref.request
        if p.response is not None:
            assert p.request_ts_ns == ref.request_ts_ns
            assert p.response == ref.response
        if p.fetch_offsets:
            for key, offset in p.fetch_offsets.items():
                assert ref.fetch_offsets[key] == offset


def _stream_length(events, direction) -> int:
    return max((e.offset + len(e.data) for e in events if e.direction == direction), default=0)


def _frames(events, direction) -> list[tuple[int, int, int, tuple[int, int] | None]]:
    """(start, end, correlation id, (api key, version) for requests) of each frame of a direction."""
    data = b"".join(e.data for e in events if e.direction == direction)
    out, pos = [], 0
    while pos + 4 <= len(data):
        end = pos + 4 + int.from_bytes(data[pos:pos + 4], "big")
        if direction == Direction.SEND:
            api = (int.from_bytes(data[pos + 4:pos + 6], "big"), int.from_bytes(data[pos + 6:pos + 8], "big"))
            out.append((pos, end, int.from_bytes(data[pos + 8:pos + 12], "big"), api))
        else:
            out.append((pos, end, int.from_bytes(data[pos + 4:pos + 8], "big"), None))
        pos = end
    return out


gap_strategy = st.lists(st.tuples(st.sampled_from([Direction.SEND, Direction.RECV]),
                                  st.floats(0, 1), st.integers(1, 3000)), max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conn=st.sampled_from(CONNECTIONS), gaps=gap_strategy,
       chunk=st.one_of(st.sampled_from([1, 3, 64, 1500, 65536]), st.integers(1, 70000)))
def test_gaps_never_mislead_the_decoder(conn, gaps, chunk):
    events = _conn_events(*conn)
    reference = _reference(*conn)
    spans: dict[Direction, list[tuple[int, int]]] = {}
    for direction, where, length in gaps:
        total = _stream_length(events, direction)
        start = int(where * total)
        spans.setdefault(direction, []).append((start, min(total, start + length)))
    pairs, state = _run(_cut(events, spans, chunk))
    _assert_consistent(pairs, reference)
    # Liveness: once three whole exchanges follow every gap, the decoder is back in step and
    # decodes the last one. (A frame start found by hunting is confirmed by the header of the
    # frame after it, and a response only by a request already seen: resync costs up to two.)
    requests = _frames(events, Direction.SEND)
    responses = {corr: start for start, _, corr, _ in _frames(events, Direction.RECV)}
    send_gaps = spans.get(Direction.SEND, [])
    recv_gaps = spans.get(Direction.RECV, [])
    if len(requests) >= 3:
        tail = requests[-3:]
        corrs = [corr for _, _, corr, _ in tail]
        after = (all(t <= tail[0][0] for _, t in send_gaps)
                 and all(c in responses and all(t <= responses[c] for _, t in recv_gaps) for c in corrs))
        decodable = all(reference[c].request_error is None and reference[c].response is not None for c in corrs)
        if after and decodable:
            assert any(p.correlation_id == corrs[-1] and p.response is not None for p in pairs), state.stats


@settings(max_examples=200, deadline=None)
@given(conn=st.sampled_from(CONNECTIONS), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8))
def test_corruption_never_raises(conn, seed, n):
    """Random byte corruption (no gap reported): nothing raises and decoding terminates."""
    rng = random.Random(seed)
    events = list(_conn_events(*conn))
    for _ in range(n):
        i = rng.randrange(len(events))
        e = events[i]
        data = bytearray(e.data)
        data[rng.randrange(len(data))] = rng.randrange(256)
        events[i] = StreamData(e.conn_id, e.direction, e.ts_ns, e.offset, bytes(data))
    pairs, state = _run(events)
    assert len(pairs) <= len(_reference(*conn)) + 2 * n + 2


@settings(max_examples=100, deadline=None)
@given(conn=st.sampled_from(CONNECTIONS), where=st.floats(0, 1))
def test_truncated_stream_ends_cleanly(conn, where):
    events = _conn_events(*conn)
    cut = int(len(events) * where)
    pairs, _ = _run(events[:cut])
    reference = _reference(*conn)
    _assert_consistent([p for p in pairs if p.response is not None], reference)


# --- the splitter on its own -------------------------------------------------------------------

def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _drain(splitter):
    out = []
    while (ev := splitter.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_splitter_gives_views_of_whole_frames_in_one_chunk():
    data = _frame(b"a" * 10) + _frame(b"b" * 20)
    s = FrameSplitter()
    s.feed_data(0, data, 7)
    frames = _drain(s)
    assert [bytes(f.payload) for f in frames] == [b"a" * 10, b"b" * 20]
    assert [f.offset for f in frames] == [0, 14]
    assert all(isinstance(f.payload, memoryview) and f.payload.obj is data for f in frames)


def test_splitter_byte_by_byte_equals_one_shot_and_keeps_timestamps():
    data = _frame(b"x" * 5) + _frame(b"y" * 9)
    s = FrameSplitter()
    for i in range(len(data)):
        s.feed_data(i, data[i:i + 1], 100 + i)
    frames = _drain(s)
    assert [bytes(f.payload) for f in frames] == [b"x" * 5, b"y" * 9]
    assert [(f.first_ts_ns, f.last_ts_ns) for f in frames] == [(100, 108), (109, 121)]


def test_gap_inside_a_frame_loses_only_that_frame():
    first, second, third = _frame(b"h" * 8 + b"a" * 100), _frame(b"b" * 30), _frame(b"c" * 6)
    s = FrameSplitter()
    s.feed_data(0, first[:20], 1)
    s.feed_gap(20, 50, 2, )
    s.feed_data(70, first[70:] + second + third, 3)
    events = _drain(s)
    assert isinstance(events[0], FrameLost)
    assert (events[0].offset, events[0].size, events[0].head) == (0, 108, first[4:20])
    assert [bytes(f.payload) for f in events[1:]] == [b"b" * 30, b"c" * 6]
    assert s.in_sync and s.resyncs == 0


def test_gap_ending_exactly_at_a_boundary_keeps_sync():
    first, second = _frame(b"a" * 40), _frame(b"b" * 5)
    s = FrameSplitter()
    s.feed_data(0, first[:10], 1)
    s.feed_gap(10, len(first) - 10, 2)
    s.feed_data(len(first), second, 3)
    events = _drain(s)
    assert type(events[0]) is FrameLost and [bytes(f.payload) for f in events[1:]] == [b"b" * 5]


class _MagicValidator:
    """Accepts frames whose payload starts with b'OK' (a stand-in for the connection's checks)."""

    window = 6

    def find(self, buf, start):
        return start

    def check(self, buf, p):
        if len(buf) - p < 6:
            return NEED_MORE
        size = int.from_bytes(buf[p:p + 4], "big")
        return ACCEPT if buf[p + 4:p + 6] == b"OK" and 2 <= size < 1000 else REJECT


def test_gap_over_a_size_prefix_resynchronises_at_the_next_valid_frame():
    frames = [_frame(b"OK" + bytes([i]) * 20) for i in range(4)]
    data = b"".join(frames)
    s = FrameSplitter(_MagicValidator())
    s.feed_data(0, data[:20], 1)
    s.feed_gap(20, 10, 2)  # covers the end of frame 0 and the size prefix of frame 1
    s.feed_data(30, data[30:], 3)
    events = _drain(s)
    assert type(events[0]) is FrameLost
    assert [bytes(f.payload) for f in events[1:]] == [f[4:] for f in frames[2:]]
    assert s.resyncs == 1 and s.skipped_bytes == len(frames[1]) - (30 - len(frames[0]))


def test_without_a_validator_lost_sync_drops_bytes_but_never_raises():
    s = FrameSplitter()
    s.feed_gap(0, 3, 1)
    s.feed_data(3, b"\x00\x00\x00\x05hello" * 10, 2)
    assert _drain(s) == [] and s.skipped_bytes == 90 and not s.in_sync


def test_overlapping_and_skipped_data_are_handled():
    data = _frame(b"q" * 10) + _frame(b"r" * 10)
    s = FrameSplitter()
    s.feed_data(0, data[:8], 1)
    s.feed_data(4, data[4:16], 2)  # overlaps by 4 bytes
    s.feed_data(16, data[16:], 3)
    assert [bytes(f.payload) for f in _drain(s)] == [b"q" * 10, b"r" * 10]
    assert s.overlaps == 1


def test_garbage_size_hunts_instead_of_waiting_forever():
    s = FrameSplitter(_MagicValidator())
    s.feed_data(0, b"\x7f\xff\xff\xff" + _frame(b"OK!!") + _frame(b"OK!"), 1)
    events = _drain(s)
    assert [bytes(f.payload) for f in events] == [b"OK!!"] and s.bad_sizes == 2 and not s.in_sync


def test_a_frame_start_from_the_capture_ends_a_hunt_at_once():
    frames = [_frame(b"f" + bytes([i]) * 30) for i in range(3)]
    s = FrameSplitter()  # no validator: on its own it could never find a boundary again
    s.feed_data(0, frames[0][:10], 1)
    s.feed_gap(10, len(frames[0]) - 10 + 2, 2)  # the rest of frame 0 and half of frame 1's size prefix
    s.feed_data(len(frames[0]) + 2, frames[1][2:], 3)  # no frame start known here: dropped
    assert not s.in_sync
    at = len(frames[0]) + len(frames[1])
    s.feed_data(at, frames[2], 4, frame_start=True)  # the kernel tracked this boundary
    events = _drain(s)
    assert type(events[0]) is FrameLost
    assert [(f.offset, bytes(f.payload)) for f in events[1:]] == [(at, frames[2][4:])]
    assert s.in_sync and s.resyncs == 1


def test_hunting_through_request_lookalikes_holds_bounded_memory():
    """Frames that look like Produce requests but never validate (here: a v9 header whose tagged
    fields are garbage) once made every size-like position a waiting candidate, and the hunt kept
    the whole stream buffered."""
    conn = KafkaConnection(1, Role.CLIENT)
    hdr = (0).to_bytes(2, "big") + (9).to_bytes(2, "big") + (7).to_bytes(4, "big") + b"\x00\x05flood"
    frame = _frame(hdr + b"x" * (4096 - len(hdr)))
    conn.feed_gap(Direction.SEND, 0, 3, 0)  # start hunting
    for i in range(40):
        conn.feed_data(Direction.SEND, 3 + i * len(frame), frame, i)
    assert conn.requests._avail < 2 * len(frame)
    assert len(conn.requests._candidates) <= MAX_WAITING
    assert conn.requests.dropped_candidates > 0


class _PatientValidator:
    """Any size up to the hunt limit is plausible and waits for its whole frame."""

    window = 4

    def find(self, buf, start):
        return start

    def check(self, buf, p):
        return NEED_MORE if len(buf) - p < 4 or int.from_bytes(buf[p:p + 4], "big") >= 4 else REJECT


def test_at_most_max_waiting_candidates_wait_at_once():
    s = FrameSplitter(_PatientValidator())
    s.feed_gap(0, 1, 0)
    for i in range(50):  # every position announces a frame of 458,759 or 117 MB (beyond the hunt limit)
        s.feed_data(1 + i * 2000, b"\x00\x07" * 1000, i)
        assert len(s._candidates) <= MAX_WAITING
    assert s.dropped_candidates > 50 * 1000
    assert [need - p for p, need in s._candidates] == [4 + 0x70007 + 4] * MAX_WAITING


def test_hunt_prefilter_keeps_every_real_request_start_and_few_others():
    """With nothing known about a connection, `find` narrows a hunt to positions that could start a
    request; every real frame start of the recorded clients' request streams must stay among them."""
    total = kept = 0
    for name in vectors.names(lambda n, e: n.endswith(("gzip-3p", "many-12p", "-tx"))):
        for (_, direction), stream in vectors.streams(name).items():
            if direction != Direction.SEND:
                continue
            starts, pos = set(), 0
            while pos + 4 <= len(stream):
                starts.add(pos)
                pos += 4 + int.from_bytes(stream[pos:pos + 4], "big")
            validator = KafkaConnection(1, Role.CLIENT).requests.validator
            found, p = set(), 0
            while True:
                p = validator.find(stream, p)
                if len(stream) - p < validator.window:
                    break
                found.add(p)
                p += 1
            whole = {s for s in starts if len(stream) - s >= validator.window}
            assert whole <= found, (name, sorted(whole - found)[:5])
            total += len(stream)
            kept += len(found)
    assert total > 100_000 and kept < total / 10, (kept, total)  # about 5% here; every position before


def test_a_request_cut_off_by_the_end_of_the_stream_is_reported_truncated():
    def starts(stream: bytes) -> list[int]:
        out, pos = [], 0
        while pos < len(stream):
            out.append(pos)
            pos += 4 + int.from_bytes(stream[pos:pos + 4], "big")
        return out

    name = next(n for n in vectors.names(lambda n, e: n.endswith("gzip-3p")))
    # a producer's connection: its last request is a Produce (api key 0)
    stream = next(s for (_, d), s in vectors.streams(name).items()
                  if d == Direction.SEND and s[starts(s)[-1] + 4:starts(s)[-1] + 6] == b"\x00\x00")
    last = starts(stream)[-1]
    cut = last + 4 + 40  # its header and the start of its body
    pairs, _ = _run([StreamData(1, Direction.SEND, 0, 0, stream[:cut])])
    assert (pairs[-1].api_key, pairs[-1].request_error, pairs[-1].response_error) == (PRODUCE, "truncated", "lost")
    assert len(pairs) == len(starts(stream))  # every earlier request is still reported (without its response)


def test_end_of_stream_with_a_partial_frame_gives_frame_lost():
    s = FrameSplitter()
    data = _frame(b"a" * 10) + _frame(b"b" * 50)
    s.feed_data(0, data[:30], 5)
    s.end()
    events = _drain(s)
    assert bytes(events[0].payload) == b"a" * 10
    assert type(events[1]) is FrameLost and (events[1].offset, events[1].size, events[1].head) == (14, 50, b"b" * 12)


def test_a_response_captured_before_its_request_is_still_paired():
    """One thread writes requests, another reads responses: a request's syscall can end (and be
    captured) after its response was read, so the response comes first. It waits for its request."""
    conn_id = CONNECTIONS[0][1]
    events = list(_conn_events(*CONNECTIONS[0]))
    reference = _reference(*CONNECTIONS[0])
    sends = [e for e in events if e.direction == Direction.SEND]
    recvs = [e for e in events if e.direction == Direction.RECV]
    # each direction in order, but every response event handed over just before the request event
    # that precedes it in the recording
    swapped = []
    for e in events:
        if e.direction == Direction.RECV and swapped and swapped[-1].direction == Direction.SEND:
            swapped.insert(len(swapped) - 1, e)
        else:
            swapped.append(e)
    assert [e for e in swapped if e.direction == Direction.SEND] == sends
    assert [e for e in swapped if e.direction == Direction.RECV] == recvs
    pairs, conn = _run(swapped)
    _assert_consistent(pairs, reference)
    assert sum(p.response is not None for p in pairs) == sum(p.response is not None for p in reference.values())
    assert conn.stats["unmatched_responses"] == 0, conn_id
