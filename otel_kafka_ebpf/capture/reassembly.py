"""Kernel events -> per-connection, per-direction ordered byte streams with explicit gaps.

The BPF side stamps every data chunk with its stream offset; any jump of the offset is bytes that
moved through the socket but were not copied, and becomes a `StreamGap` of exactly that length.
Nothing is guessed: a stream either continues byte for byte or says how many bytes it lacks.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass, field

from . import events as ev
from .loader import DATA_HEADER, RawData, parse_data_event
from .streams import (
    ConnectionClosed,
    ConnectionOpened,
    Direction,
    GapReason,
    Role,
    StreamData,
    StreamEvent,
    StreamGap,
)

# gap flag -> reason, most informative first
_FLAG_REASONS = (
    (ev.GAP_RINGBUF, GapReason.RINGBUF_FULL),
    (ev.GAP_MISSED_RUN, GapReason.MISSED_RUN),
    (ev.GAP_USER_COPY, GapReason.USER_COPY),
    (ev.GAP_IOVEC, GapReason.IOVEC_LIMIT),
    (ev.GAP_LOOP, GapReason.IOVEC_LIMIT),
    (ev.GAP_BUDGET, GapReason.BUDGET),
    (ev.GAP_SENDFILE, GapReason.SENDFILE),
    (ev.GAP_UNSYNCED, GapReason.UNKNOWN_START),
)


# the kernel's reason for the skips of an event (enum oke_skip_reason)
SKIP_REASONS = {ev.SKIP_RECORDS: GapReason.RECORDS_SKIPPED, ev.SKIP_SASL: GapReason.SASL, ev.SKIP_HEADS: GapReason.HEADS}
_unpack_header = DATA_HEADER.unpack_from
_HEADER = DATA_HEADER.size
_unpack_skips = [None] + [struct.Struct(f"<{2 * k}I").unpack_from for k in range(1, 9)]
_DIRECTIONS = (Direction.SEND, Direction.RECV)


def _fast_constructor(cls, fields: tuple[str, ...]):
    """cls(*values) for a frozen slots dataclass without its generated __init__ (which sets each field
    through object.__setattr__): the slots' own setters, bound once. The hot path builds one per event."""
    new = object.__new__
    setters = tuple(cls.__dict__[f].__set__ for f in fields)
    assert fields == tuple(f for f in cls.__slots__ if not f.startswith("__"))
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = setters

    def make(a, b, c, d, e, f, g, h, i):
        o = new(cls)
        s0(o, a)
        s1(o, b)
        s2(o, c)
        s3(o, d)
        s4(o, e)
        s5(o, f)
        s6(o, g)
        s7(o, h)
        s8(o, i)
        return o
    return make


_stream_data = _fast_constructor(StreamData, ("conn_id", "direction", "ts_ns", "offset", "data", "frame_start",
                                              "last_ts_ns", "skips", "skip_reason"))


def gap_reason(flags: int) -> GapReason:
    for bit, reason in _FLAG_REASONS:
        if flags & bit:
            return reason
    return GapReason.RINGBUF_FULL  # a jump without a recorded reason: the event carrying it was lost


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    addr = ipaddress.IPv6Address(raw[:16])
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def wall_clock_offset_ns() -> int:
    """wall clock - CLOCK_MONOTONIC (what bpf_ktime_get_ns returns)."""
    return time.time_ns() - time.monotonic_ns()


@dataclass
class _Conn:
    pid: int
    next_offset: list[int] = field(default_factory=lambda: [0, 0])


@dataclass
class AssemblerStats:
    connections: int = 0
    orphan_data: int = 0      # data of a connection whose open event was lost
    overlaps: int = 0         # chunks that repeated bytes already delivered
    gaps: int = 0             # losses
    gap_bytes: int = 0
    skips: int = 0            # ranges left in the kernel on purpose (record payloads, SASL)
    skipped_bytes: int = 0


class StreamAssembler:
    """Feed raw kernel events in ring-buffer order; get stream events back."""

    def __init__(self, clock_offset_ns: int | None = None):
        self.clock_offset_ns = wall_clock_offset_ns() if clock_offset_ns is None else clock_offset_ns
        self._conns: dict[int, _Conn] = {}
        self.stats = AssemblerStats()

    def _wall(self, mono: int) -> int:
        return mono + self.clock_offset_ns

    def feed(self, raw) -> list[StreamEvent]:
        if isinstance(raw, RawData):
            return self._data(raw)
        if isinstance(raw, ev.OpenEvent):
            return self._open(raw)
        if isinstance(raw, ev.CloseEvent):
            return self._close(raw.conn_id, self._wall(raw.ts_ns), (raw.send_bytes, raw.recv_bytes),
                               tuple(raw.gap_flags))
        if isinstance(raw, ev.ExitEvent):
            out: list[StreamEvent] = []
            for conn_id in [cid for cid, c in self._conns.items() if c.pid == raw.pid]:
                out += self._close(conn_id, self._wall(raw.ts_ns), None)
            return out
        return []

    def _open(self, e: ev.OpenEvent) -> list[StreamEvent]:
        self._conns[e.conn_id] = _Conn(e.pid)
        self.stats.connections += 1
        return [ConnectionOpened(
            conn_id=e.conn_id, ts_ns=self._wall(e.ts_ns), pid=e.pid, tid=e.tid,
            comm=e.comm.decode(errors="replace"), cgroup_id=e.cgroup_id, netns=e.netns,
            local_addr=_addr(e.family, bytes(e.local_addr)), local_port=e.local_port,
            remote_addr=_addr(e.family, bytes(e.remote_addr)), remote_port=e.remote_port,
            role=Role(e.role) if e.role in (0, 1, 2) else Role.UNKNOWN,
            tls=ev.TLS_STACKS.get(e.tls, "undecoded"),
        )]

    def feed_data_record(self, raw: bytes) -> list[StreamEvent]:
        """A data event as the ring holds it. The common case (a known connection, the stream going on
        where it was, nothing lost before) is one StreamData built here; anything else goes the
        general way."""
        (_, n, conn_id, ts, offset, _pid, _tid, direction, gap_flags, flags, n_skips, skip_reason, _,
         last) = _unpack_header(raw)
        conn = self._conns.get(conn_id)
        if conn is None or gap_flags or offset != conn.next_offset[direction & 1]:
            return self._data(parse_data_event(raw))
        data = raw[_HEADER:_HEADER + n]
        wall = self.clock_offset_ns
        if n_skips:
            table = _unpack_skips[n_skips](raw, _HEADER + n) if n_skips < len(_unpack_skips) else \
                struct.unpack_from(f"<{2 * n_skips}I", raw, _HEADER + n)
            skips = tuple(zip(table[::2], table[1::2]))
            skipped = sum(table[1::2])
            self.stats.skips += n_skips
            self.stats.skipped_bytes += skipped
            reason = SKIP_REASONS.get(skip_reason, GapReason.RECORDS_SKIPPED)
        else:
            skips, skipped, reason = (), 0, None
        conn.next_offset[direction & 1] = offset + n + skipped
        return [_stream_data(conn_id, _DIRECTIONS[direction & 1], ts + wall, offset, data, bool(flags & ev.DATA_FRAME_START),
                             None if last == ts else last + wall, skips, reason)]

    def _data(self, d: RawData) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        conn = self._conns.get(d.conn_id)
        ts = self._wall(d.ts_mono)
        last = None if d.last_ts_mono is None or d.last_ts_mono == d.ts_mono else self._wall(d.last_ts_mono)
        if conn is None:
            # the open event was lost: announce what we know rather than drop the bytes
            self.stats.orphan_data += 1
            conn = self._conns[d.conn_id] = _Conn(d.pid)
            out.append(ConnectionOpened(d.conn_id, ts, d.pid, d.tid, "", 0, 0, "", 0, "", 0, Role.UNKNOWN))
        direction = Direction(d.direction & 1)
        expected = conn.next_offset[direction]
        if d.skips:
            return self._digest(out, conn, d, direction, expected, ts, last)
        data = d.payload
        offset = d.offset
        if offset < expected:
            skip = expected - offset
            if skip >= len(data):
                self.stats.overlaps += 1
                return out
            data, offset = data[skip:], expected
            self.stats.overlaps += 1
        if offset > expected:
            out.append(self._gap(d.conn_id, direction, ts, expected, offset - expected, gap_reason(d.gap_flags)))
        elif d.gap_flags & ev.GAP_UNSYNCED:
            # no bytes missing, but frame boundaries are unknown from here (joined mid-stream)
            out.append(StreamGap(d.conn_id, direction, ts, offset, 0, GapReason.UNKNOWN_START))
        out.append(StreamData(d.conn_id, direction, ts, offset, data,
                              bool(d.flags & ev.DATA_FRAME_START) and offset == d.offset, last))
        conn.next_offset[direction] = offset + len(data)
        return out

    def _digest(self, out: list[StreamEvent], conn: _Conn, d: RawData, direction: Direction, expected: int,
                ts: int, last: int | None) -> list[StreamEvent]:
        """An event with skipped ranges: one StreamData that says where they are (the kernel sends one
        event per frame, and the decoder takes it whole); split up only where it overlaps bytes
        already delivered."""
        reason = SKIP_REASONS.get(d.skip_reason, GapReason.RECORDS_SKIPPED)
        data = d.payload
        offset = d.offset
        skipped = sum(n for _, n in d.skips)
        self.stats.skips += len(d.skips)
        self.stats.skipped_bytes += skipped
        if offset > expected:
            out.append(self._gap(d.conn_id, direction, ts, expected, offset - expected, gap_reason(d.gap_flags)))
        elif d.gap_flags & ev.GAP_UNSYNCED and offset == expected:
            out.append(StreamGap(d.conn_id, direction, ts, offset, 0, GapReason.UNKNOWN_START))
        if offset >= expected:
            out.append(StreamData(d.conn_id, direction, ts, offset, data, bool(d.flags & ev.DATA_FRAME_START), last,
                                  d.skips, reason))
            conn.next_offset[direction] = offset + len(data) + skipped
            return out
        # overlaps what was delivered: the pieces past `expected`, copied runs and skips apart
        self.stats.overlaps += 1
        end_ts = ts if last is None else last
        pos = offset
        prev = 0
        for at, n in (*d.skips, (len(data), 0)):
            run = data[prev:at]
            if run and pos + len(run) > expected:
                cut = max(0, expected - pos)
                out.append(StreamData(d.conn_id, direction, ts, pos + cut, run[cut:], False, last))
            pos += len(run)
            prev = at
            if n and pos + n > expected:
                cut = max(0, expected - pos)
                out.append(StreamGap(d.conn_id, direction, end_ts, pos + cut, n - cut, reason))
            pos += n
        conn.next_offset[direction] = max(expected, pos)
        return out

    def _gap(self, conn_id: int, direction: Direction, ts: int, offset: int, length: int,
             reason: GapReason) -> StreamGap:
        self.stats.gaps += 1
        self.stats.gap_bytes += length
        return StreamGap(conn_id, direction, ts, offset, length, reason)

    def _close(self, conn_id: int, ts: int, final: tuple[int, int] | None,
               gap_flags: tuple[int, int] = (0, 0)) -> list[StreamEvent]:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return []
        out: list[StreamEvent] = []
        if final is not None:
            for direction in (Direction.SEND, Direction.RECV):
                missing = final[direction] - conn.next_offset[direction]
                if missing > 0:
                    # the close says why (bytes of runs the kernel skipped at the end: MISSED_RUN); with no
                    # reason, the events that carried them were lost
                    out.append(self._gap(conn_id, direction, ts, conn.next_offset[direction], missing,
                                         gap_reason(gap_flags[direction])))
        out.append(ConnectionClosed(conn_id, ts))
        return out

    def open_connections(self) -> int:
        return len(self._conns)
