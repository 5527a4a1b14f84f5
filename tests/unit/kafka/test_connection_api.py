"""The sans-IO API of one connection, used exactly as kafka/connection.py's docstring documents it.

Recorded real traffic (tests/vectors) fed to a `KafkaConnection` in one piece and a byte at a time gives the
same pairs, the same as `KafkaStreamDecoder` gives; every event is a `KafkaPair` whose missing sides carry a
declared reason; `next_event` says `NEED_DATA` once drained; a loss fed with `feed_gap` changes none of that.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from otel_kafka_ebpf.capture.streams import (
    ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)
from otel_kafka_ebpf.kafka import NEED_DATA, KafkaConnection, KafkaPair, KafkaStreamDecoder
from otel_kafka_ebpf.kafka.connection import MISSING_REASONS
from tests.unit.kafka import vectors

ALL = vectors.names()


def _per_connection(events) -> dict[int, tuple[Role, list]]:
    """(role, its StreamData/StreamGap events) of each connection of a vector."""
    roles: dict[int, Role] = {}
    streams: dict[int, list] = defaultdict(list)
    for event in events:
        if isinstance(event, ConnectionOpened):
            roles[event.conn_id] = Role.SERVER if event.role == Role.SERVER else Role.CLIENT
        elif isinstance(event, (StreamData, StreamGap)):
            streams[event.conn_id].append(event)
    return {cid: (roles.get(cid, Role.CLIENT), evs) for cid, evs in streams.items()}


def _drain(conn: KafkaConnection, out: list) -> None:
    while (pair := conn.next_event()) is not NEED_DATA:
        out.append(pair)


def _decode(conn_id: int, role: Role, events, byte_by_byte: bool) -> tuple[list[KafkaPair], Counter]:
    """The docstring's loop: feed each event (data in one piece, or a byte per call), drain, close, drain."""
    conn = KafkaConnection(conn_id, role)
    pairs: list[KafkaPair] = []
    for ev in events:
        if isinstance(ev, StreamData):
            if byte_by_byte and not ev.skips:
                for i in range(len(ev.data)):
                    conn.feed_data(ev.direction, ev.offset + i, ev.data[i:i + 1], ev.ts_ns, ev.frame_start and i == 0,
                                   ev.last_ts_ns)
                    _drain(conn, pairs)
            else:
                conn.feed_data(ev.direction, ev.offset, ev.data, ev.ts_ns, ev.frame_start, ev.last_ts_ns, ev.skips,
                               ev.skip_reason)
        else:
            conn.feed_gap(ev.direction, ev.offset, ev.length, ev.ts_ns, ev.reason)
        _drain(conn, pairs)
    conn.close(events[-1].ts_ns if events else 0)
    _drain(conn, pairs)
    assert conn.next_event() is NEED_DATA  # drained stays drained
    return pairs, conn.stats


def _declared(pairs) -> None:
    for pair in pairs:
        assert type(pair) is KafkaPair
        assert pair.request_error is None or pair.request_error in MISSING_REASONS, pair
        assert pair.response_error is None or pair.response_error in MISSING_REASONS, pair
        assert pair.response is not None or pair.response_error is not None, pair


@pytest.mark.parametrize("name", ALL)
def test_one_piece_and_byte_by_byte_give_the_same_pairs(name):
    events = vectors.events(name)
    stream_pairs: dict[int, list] = defaultdict(list)
    decoder = KafkaStreamDecoder()
    for event in events:
        for pair in decoder.feed(event):
            stream_pairs[pair.conn_id].append(pair)
    for pair in decoder.finish():
        stream_pairs[pair.conn_id].append(pair)
    seen = 0
    for cid, (role, evs) in _per_connection(events).items():
        whole, whole_stats = _decode(cid, role, evs, byte_by_byte=False)
        bytewise, _ = _decode(cid, role, evs, byte_by_byte=True)
        assert bytewise == whole, f"{name}: connection {cid}"
        assert whole == stream_pairs[cid], f"{name}: connection {cid}"
        _declared(whole)
        assert not any(whole_stats[k] for k in whole_stats if k.startswith(("malformed", "unmatched"))), whole_stats
        seen += len(whole)
    assert seen == sum(len(p) for p in stream_pairs.values()) > 0


def _with_loss(evs, direction: Direction, at: int, length: int) -> list:
    """The connection's events with `length` bytes of `direction` from stream offset `at` lost (a StreamGap)."""
    out = []
    for ev in evs:
        if not isinstance(ev, StreamData) or ev.direction != direction \
                or not ev.offset <= at < ev.offset + len(ev.data):
            out.append(ev)
            continue
        cut = at - ev.offset
        n = min(length, len(ev.data) - cut)
        if cut:
            out.append(StreamData(ev.conn_id, ev.direction, ev.ts_ns, ev.offset, ev.data[:cut], ev.frame_start,
                                  ev.last_ts_ns))
        out.append(StreamGap(ev.conn_id, ev.direction, ev.ts_ns, at, n, GapReason.RINGBUF_FULL))
        if cut + n < len(ev.data):
            out.append(StreamData(ev.conn_id, ev.direction, ev.ts_ns, at + n, ev.data[cut + n:], False,
                                  ev.last_ts_ns))
    return out


@pytest.mark.parametrize("name", ["java-plain", "go-tx", "confluent-many-12p", "kafkapython-acks0"])
@pytest.mark.parametrize("direction", [Direction.SEND, Direction.RECV])
def test_a_loss_fed_with_feed_gap_gives_declared_pairs_however_the_bytes_are_split(name, direction):
    busiest = max(_per_connection(vectors.events(name)).items(), key=lambda item: len(item[1][1]))
    cid, (role, evs) = busiest
    end = max(ev.offset + len(ev.data) for ev in evs if isinstance(ev, StreamData) and ev.direction == direction)
    for at, length in ((end // 3, 7), (end // 2, 300), (1, 2)):  # inside a frame, across frames, a size prefix
        lossy = _with_loss(evs, direction, at, length)
        whole, stats = _decode(cid, role, lossy, byte_by_byte=False)
        bytewise, _ = _decode(cid, role, lossy, byte_by_byte=True)
        assert bytewise == whole, f"{name}: connection {cid}, {length} bytes lost at {at}"
        _declared(whole)
        assert stats["gap_bytes"] > 0
