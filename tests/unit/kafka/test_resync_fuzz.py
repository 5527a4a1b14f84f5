"""The hunt for the next frame after a lost boundary, fuzzed: whatever bytes follow the gap, the connection
gives pairs and counters, never an exception, and the same answer twice.

Seeds are real conversations of tests/vectors (one connection's requests and responses, in the order they
were captured). A gap swallows the size field of one frame, so the splitter hunts with the connection's
validator (which knows the client id, the last correlation id and the pending requests, or nothing at all
for a stream joined mid-way); the bytes it hunts through are then cut at every length, mutated one byte at a
time, and have their length fields (frame sizes, client id lengths, string lengths, array counts, compact
lengths) overwritten with long and negative values. Some seeds carry a client id that is not UTF-8 and longer
than a third of an int16: decoded with replacement characters it encodes to more bytes than an int16 length
holds, which the hunt once packed and raised on (issue 14).
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_kafka_ebpf.capture.streams import Direction, GapReason, Role, StreamData, StreamGap
from otel_kafka_ebpf.kafka import NEED_DATA, KafkaConnection, KafkaStreamDecoder
from otel_kafka_ebpf.kafka.versions import FETCH, PRODUCE
from tests.unit.kafka import vectors

CLIENTS = ("java-plain", "confluent-plain", "go-plain", "kafkapython-plain")
HEAD = 24  # bytes of each hunted frame mutated at every position (size, api, version, correlation id, client id)
STRIDE = 397  # beyond the heads, every STRIDE-th byte
LONGS16 = (b"\x7f\xff", b"\x80\x00", b"\xff\xfe")
LONGS32 = (b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\xff\xff\xff\xfe")
LONG_VARINT = b"\xff\xff\xff\xff\x0f"
FLIPS = (0xFF, 0x80, 0x01)

Frame = tuple[Direction, bytes]  # a frame with its size field, in the direction it travelled


def _seed_connections() -> list[tuple[str, int]]:
    """Per client: the connection with Produce, the one with Fetch, and the one with the most frames (the
    group's)."""
    out = []
    for name in CLIENTS:
        pairs, _ = vectors.decode(vectors.events(name))
        by_conn: dict[int, list] = {}
        for p in pairs:
            by_conn.setdefault(p.conn_id, []).append(p.api_key)
        picked = {next(c for c, apis in sorted(by_conn.items()) if api in apis) for api in (PRODUCE, FETCH)}
        picked.add(max(sorted(by_conn), key=lambda c: len(by_conn[c])))
        out.extend((name, c) for c in sorted(picked))
    return out


@functools.lru_cache(maxsize=None)
def _conversation(name: str, conn_id: int) -> tuple[Frame, ...]:
    """The connection's frames in the order their first bytes were captured."""
    starts: dict[Direction, list[int]] = {}
    streams = vectors.streams(name)
    for direction in Direction:
        stream, pos, out = streams.get((conn_id, direction), b""), 0, []
        while pos + 4 <= len(stream):
            out.append(pos)
            pos += 4 + int.from_bytes(stream[pos:pos + 4], "big")
        starts[direction] = out
    keyed = []
    captured = (ev for ev in vectors.events(name) if isinstance(ev, StreamData) and ev.conn_id == conn_id)
    for index, e in enumerate(captured):
        for start in starts[e.direction]:
            if e.offset <= start < e.offset + len(e.data):
                stream = streams[(conn_id, e.direction)]
                end = start + 4 + int.from_bytes(stream[start:start + 4], "big")
                keyed.append(((index, start), (e.direction, stream[start:end])))
    return tuple(frame for _, frame in sorted(keyed))


def _with_client_id(frames: tuple[Frame, ...], client_id: bytes) -> tuple[Frame, ...]:
    """The same conversation with another client id in every request (sizes adjusted)."""
    out = []
    for direction, frame in frames:
        if direction == Direction.SEND:
            clen = int.from_bytes(frame[12:14], "big", signed=True)
            rest = frame[14 + max(clen, 0):]
            body = frame[4:12] + len(client_id).to_bytes(2, "big") + client_id + rest
            frame = len(body).to_bytes(4, "big") + body
        out.append((direction, frame))
    return tuple(out)


class Scenario:
    """A conversation with a gap over the first bytes of the size field of frame `k` of `direction` (or, when
    `joined`, that direction's stream captured only from there on, as when the agent starts mid-stream); the
    bytes after the gap, up to the end of the two frames after frame k, are the ones hunted through."""

    def __init__(self, frames: tuple[Frame, ...], direction: Direction, k: int, joined: bool = False):
        self.frames = frames
        self.direction = direction
        self.joined = joined
        self.window = [i for i, (d, _) in enumerate(frames) if d == direction][k:k + 3]
        self.cut = 1 if joined else 2  # bytes of frame k's size field inside the gap
        self.hunted = b"".join(frames[i][1] for i in self.window)[self.cut:]

    def heads(self) -> list[int]:
        """Positions in `hunted` of the first bytes of the hunted frames."""
        out, pos = [], 0
        for i in self.window:
            out.append(max(0, pos - self.cut))
            pos += len(self.frames[i][1])
        return out

    def events(self, hunted: bytes, chunk: int = 1 << 30, rest: bool = True) -> list[tuple]:
        """("gap" | "data", direction, offset, length | bytes) in feeding order, `hunted` in place of the
        window's bytes and fed in pieces of `chunk` bytes; without `rest`, the direction's stream ends there."""
        offsets = {Direction.SEND: 0, Direction.RECV: 0}
        out = []
        for i, (direction, frame) in enumerate(self.frames):
            at = offsets[direction]
            offsets[direction] += len(frame)
            if direction == self.direction:
                if i == self.window[0]:
                    gap_at = 0 if self.joined else at
                    out.append(("gap", direction, gap_at, at + self.cut - gap_at))
                    out.extend(("data", direction, at + self.cut + j, hunted[j:j + chunk])
                               for j in range(0, len(hunted), chunk))
                    continue
                if i in self.window or (self.joined and i < self.window[0]) or (not rest and i > self.window[0]):
                    continue
            out.append(("data", direction, at, frame))
        return out


def _decode(events) -> tuple[list, dict]:
    conn = KafkaConnection(1, Role.CLIENT)
    pairs = []
    for kind, direction, offset, what in events:
        if kind == "gap":
            conn.feed_gap(direction, offset, what, 0, GapReason.RINGBUF_FULL)
        else:
            conn.feed_data(direction, offset, what, 0)
        while (ev := conn.next_event()) is not NEED_DATA:
            pairs.append(ev)
    conn.close(0)
    while (ev := conn.next_event()) is not NEED_DATA:
        pairs.append(ev)
    return pairs, dict(conn.stats)


def _positions(hunted: bytes, heads: list[int]) -> list[int]:
    """Every position of each hunted frame's head, and every STRIDE-th beyond."""
    return sorted({p for h in heads for p in range(h, min(h + HEAD, len(hunted)))} | set(range(0, len(hunted), STRIDE)))


def _mutations(hunted: bytes, heads: list[int]):
    """At each of the positions: single-byte flips, and int16, int32 and varint length fields made long or
    negative."""
    for p in _positions(hunted, heads):
        for flip in FLIPS:
            yield hunted[:p] + bytes([hunted[p] ^ flip]) + hunted[p + 1:]
        for field in (*LONGS16, *LONGS32, LONG_VARINT):
            yield hunted[:p] + field + hunted[p + len(field):]


SEEDS = _seed_connections()
LONG_CLIENT_ID = b"\xff" * 11_000  # 33,000 bytes once decoded with U+FFFD and encoded again


def _scenarios():
    """Per seed and direction: a gap before the second frame, and the stream joined there; requests also with
    the long client id that is not UTF-8 after a gap (where the request validator looks for the id it learnt)."""
    out = []
    for name, conn_id in SEEDS:
        frames = _conversation(name, conn_id)
        variants = [("", frames, tuple(Direction)),
                    ("-long-non-utf8-client-id", _with_client_id(frames, LONG_CLIENT_ID), (Direction.SEND,))]
        for variant, conversation, directions in variants:
            for direction in directions:
                if sum(d == direction for d, _ in conversation) < 2:
                    continue
                for joined in (False, True) if not variant else (False,):
                    where = "joined" if joined else "gap"
                    out.append((f"{name}-{conn_id}-{direction.name}-{where}{variant}", conversation, direction, 1,
                                joined))
    return out


SCENARIOS = _scenarios()


def test_seeds_cover_every_client_with_produce_fetch_and_long_client_ids():
    names = {s[0] for s in SCENARIOS}
    for client in CLIENTS:
        assert sum(n.startswith(client) for n in names) >= 8
    assert sum(n.endswith("-long-non-utf8-client-id") for n in names) * 5 == len(names)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_the_hunt_decodes_or_counts_whatever_follows_a_gap(scenario):
    _, frames, direction, k, joined = scenario
    s = Scenario(frames, direction, k, joined)
    intact = _decode(s.events(s.hunted))
    assert intact == _decode(s.events(s.hunted))
    for chunk in (1, 7):  # the hunt decides as bytes come: byte by byte, and pieces that cut every field
        assert _decode(s.events(s.hunted, chunk))[0] == intact[0]
    for cut in _positions(s.hunted, s.heads()):  # prefixes, the stream ending there
        _decode(s.events(s.hunted[:cut], rest=False))  # anything raised fails the test
    for i, mutated in enumerate(_mutations(s.hunted, s.heads())):
        first = _decode(s.events(mutated))
        if i % 7 == 0:  # the same answer twice, and fed in pieces it still raises nothing
            assert first == _decode(s.events(mutated))
            _decode(s.events(mutated, 61))


def test_a_client_id_that_is_not_utf8_is_found_again_after_a_gap():
    """The hunt looks for the client id's own bytes: with a long client id that is not UTF-8 it neither
    raises nor misses the next request, and the exchanges after the gap are paired."""
    name, conn_id = next((n, c) for n, c in SEEDS if n == "java-plain" and
                         sum(d == Direction.SEND for d, _ in _conversation(n, c)) >= 7)
    frames = _with_client_id(_conversation(name, conn_id), LONG_CLIENT_ID)
    s = Scenario(frames, Direction.SEND, 2)
    pairs, stats = _decode(s.events(s.hunted, 1 << 20))
    assert stats.get("request_resyncs") == 1, stats
    answered = [p for p in pairs if p.response is not None and p.request is not None]
    sends = [f for d, f in frames if d == Direction.SEND]
    assert len(answered) >= len(sends) - 3, (stats, [(p.correlation_id, p.request_error, p.response_error)
                                                     for p in pairs])
    assert all(p.client_id == "\ufffd" * len(LONG_CLIENT_ID) for p in pairs)


def test_the_stream_decoder_never_raises_on_a_hunt_through_a_long_client_id():
    """Issue 14's crash, end to end: a client id learnt (here from real requests whose client id is 11,000 bytes
    that are not UTF-8), then a gap; the decoder hunts, finds the next request and goes on."""
    name, conn_id = next((n, c) for n, c in SEEDS if sum(d == Direction.SEND for d, _ in _conversation(n, c)) >= 7)
    frames = _with_client_id(_conversation(name, conn_id), LONG_CLIENT_ID)
    decoder = KafkaStreamDecoder()
    s = Scenario(frames, Direction.SEND, 1)
    for kind, direction, offset, what in s.events(s.hunted, 4096):
        if kind == "gap":
            decoder.feed(StreamGap(conn_id, direction, 0, offset, what, GapReason.RINGBUF_FULL))
        else:
            decoder.feed(StreamData(conn_id, direction, 0, offset, what))
    decoder.finish()
    assert decoder.summary()["request_resyncs"] == 1


def _brute_find(buf: bytes, start: int, needle: bytes, window: int) -> int:
    """The smallest position from `start` on whose client id field holds the needle, or, near the end, begins
    it; else the first position whose quick test lacks bytes."""
    last = len(buf) - window
    for q in range(start, last + 1):
        if buf[q + 12:q + 12 + len(needle)] == needle[:len(buf) - q - 12]:
            return q
    return max(start, last + 1)


@settings(max_examples=300, deadline=None)
@given(client=st.binary(min_size=0, max_size=40), parts=st.lists(st.sampled_from(["noise", "needle", "cut"]),
                                                                 max_size=6),
       noise=st.binary(min_size=0, max_size=30), start=st.integers(0, 60))
def test_the_request_validator_finds_what_a_scan_of_every_position_finds(client, parts, noise, start):
    """One test per occurrence of the client id's length field, not per position (a long client id made the
    hunt quadratic in its length), with the same answer as a scan of every position."""
    conn = KafkaConnection(1, Role.CLIENT)
    conn.client_id_bytes, conn.client_id, conn.last_correlation_id = client, client.decode("utf-8", "replace"), 7
    needle = len(client).to_bytes(2, "big") + client
    buf = b""
    for part in parts:
        buf += noise if part == "noise" else b"\x00" * 12 + (needle if part == "needle" else needle[:len(needle) // 2])
    validator = conn.requests.validator
    start = min(start, len(buf))
    assert validator.find(bytearray(buf), start) == _brute_find(buf, start, needle, validator.window)
