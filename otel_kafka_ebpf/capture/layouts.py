"""Digest layouts: what the kernel copies and what it skips of a frame body, per API, version, direction.

A layout is a short list of ops (bpf/capture.h, `enum oke_op`) that the BPF walker
(bpf/digest.bpf.h) follows through a frame body after its head (request: api key, version,
correlation id; response: correlation id). Structure is copied; each record batch's 61-byte
header is copied and its records are skipped as one declared range; SASL bodies are skipped whole.

    layouts_for("digest")   # {(is_response, api_key, version): ops} to load into the kernel

`walk(ops, body, record_prefix)` is the same walk in Python: the reference the kernel is tested
against, and the way unit tests turn recorded frames into digests.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple

from .events import INFLIGHT, SKIP_RECORDS, SKIP_SASL

OP_STOP, OP_COPY, OP_STR16, OP_CSTR, OP_TAGS, OP_ARRAY, OP_CARRAY, OP_END, OP_RECORDS, OP_CRECORDS, \
    OP_SKIP_REST = range(11)

PRODUCE, FETCH, SASL_HANDSHAKE, SASL_AUTHENTICATE, SHARE_FETCH = 0, 1, 17, 36, 78
BATCH_HEADER = 61

Op = tuple[int, int]  # (op, arg)


def _copy(n: int) -> list[Op]:
    out = []
    while n > 0:
        out.append((OP_COPY, min(n, 255)))
        n -= 255
    return out


def _tags(flex: bool) -> list[Op]:
    return [(OP_TAGS, 0)] if flex else []


def _string(flex: bool) -> list[Op]:
    return [(OP_CSTR, 0)] if flex else [(OP_STR16, 0)]


def _array(flex: bool, body: list[Op]) -> list[Op]:
    return [(OP_CARRAY if flex else OP_ARRAY, len(body)), *body, (OP_END, 0)]


def _records(flex: bool) -> list[Op]:
    return [(OP_CRECORDS if flex else OP_RECORDS, 0)]


def _topic(ids: bool, flex: bool) -> list[Op]:
    return _copy(16) if ids else _string(flex)


def _merge(ops: list[Op]) -> list[Op]:
    """Adjacent copies become one (fewer steps in the kernel)."""
    out: list[Op] = []
    for op in ops:
        if op[0] == OP_COPY and out and out[-1][0] == OP_COPY and out[-1][1] + op[1] <= 255:
            out[-1] = (OP_COPY, out[-1][1] + op[1])
        else:
            out.append(op)
    return out


def _fix_arrays(ops: list[Op]) -> list[Op]:
    """An array's arg counts the ops of its body as finally laid out (after merging)."""
    out = list(ops)
    for i, (op, _) in enumerate(out):
        if op in (OP_ARRAY, OP_CARRAY):
            depth = 0
            for j in range(i + 1, len(out)):
                if out[j][0] in (OP_ARRAY, OP_CARRAY):
                    depth += 1
                elif out[j][0] == OP_END:
                    if depth == 0:
                        out[i] = (op, j - i - 1)
                        break
                    depth -= 1
    return out


def _finish(ops: list[Op]) -> list[Op]:
    return _fix_arrays(_merge(ops + [(OP_STOP, 0)]))


def produce_request(version: int) -> list[Op]:
    """Produce request body after api key, version and correlation id (v0-13; flexible from v9)."""
    flex, ids = version >= 9, version >= 13
    ops = [(OP_STR16, 0)] + _tags(flex)  # request header: client id, tagged fields
    if version >= 3:
        ops += _string(flex)  # transactional id
    ops += _copy(6)  # acks, timeout
    partition = _copy(4) + _records(flex) + _tags(flex)
    ops += _array(flex, _topic(ids, flex) + _array(flex, partition) + _tags(flex))
    return _finish(ops + _tags(flex))


def fetch_response(version: int) -> list[Op]:
    """Fetch response body after the correlation id (v4-18; flexible from v12, topic ids from v13)."""
    flex, ids = version >= 12, version >= 13
    ops = _tags(flex)  # response header
    ops += _copy(4 + (6 if version >= 7 else 0))  # throttle, error code, session id
    partition = _copy(4 + 2 + 8 + 8 + (8 if version >= 5 else 0))  # index, error, hw, lso, log start
    partition += _array(flex, _copy(16) + _tags(flex))  # aborted transactions (nullable)
    partition += _copy(4 if version >= 11 else 0)  # preferred read replica
    partition += _records(flex) + _tags(flex)
    ops += _array(flex, _topic(ids, flex) + _array(flex, partition) + _tags(flex))
    return _finish(ops + _tags(flex))


def share_fetch_response(version: int) -> list[Op]:
    """ShareFetch response body after the correlation id (v0-2, all flexible)."""
    ops = _tags(True) + _copy(6) + _string(True)  # throttle, error code, error message
    ops += _copy(4 if version >= 1 else 0)  # acquisition lock timeout
    partition = _copy(6) + _string(True) + _copy(2) + _string(True)  # index, errors and messages
    partition += _copy(8) + _tags(True)  # current leader
    partition += _records(True)
    partition += _array(True, _copy(18) + _tags(True))  # acquired records
    partition += _tags(True)
    ops += _array(True, _copy(16) + _array(True, partition) + _tags(True))
    ops += _array(True, _copy(4) + _string(True) + _copy(4) + _string(True) + _tags(True))  # node endpoints
    return _finish(ops + _tags(True))


def sasl_request(api_key: int, version: int) -> list[Op]:
    """SaslHandshake/SaslAuthenticate requests: the header's client id, then nothing of the body."""
    flex = api_key == SASL_AUTHENTICATE and version >= 2
    return _finish([(OP_STR16, 0)] + _tags(flex) + [(OP_SKIP_REST, 0)])


def sasl_response(api_key: int, version: int) -> list[Op]:
    flex = api_key == SASL_AUTHENTICATE and version >= 2
    return _finish(_tags(flex) + [(OP_SKIP_REST, 0)])


def layouts_for(mode: str) -> dict[tuple[bool, int, int], list[Op]]:
    """(is_response, api_key, version) -> ops. SASL bodies are skipped in every mode; the digest of
    Produce requests and Fetch/ShareFetch responses only in digest mode."""
    out: dict[tuple[bool, int, int], list[Op]] = {}
    for version in range(0, 2):
        out[(False, SASL_HANDSHAKE, version)] = sasl_request(SASL_HANDSHAKE, version)
        out[(True, SASL_HANDSHAKE, version)] = sasl_response(SASL_HANDSHAKE, version)
    for version in range(0, 3):
        out[(False, SASL_AUTHENTICATE, version)] = sasl_request(SASL_AUTHENTICATE, version)
        out[(True, SASL_AUTHENTICATE, version)] = sasl_response(SASL_AUTHENTICATE, version)
    if mode == "digest":
        for version in range(0, 14):
            out[(False, PRODUCE, version)] = produce_request(version)
        for version in range(4, 19):
            out[(True, FETCH, version)] = fetch_response(version)
        for version in range(0, 3):
            out[(True, SHARE_FETCH, version)] = share_fetch_response(version)
    return out


# --- the same walk in Python ---------------------------------------------------------------------

class Piece(NamedTuple):
    """A run of a frame body: `copied` (True) or skipped for `reason`, at body offset `start`."""

    start: int
    length: int
    copied: bool
    reason: int = 0


class _Body:
    """A frame body walked from the start; every byte read is part of a copied piece."""

    def __init__(self, body: bytes, start: int) -> None:
        self.body = body
        self.pos = start
        self.pieces: list[Piece] = [Piece(0, start, True)] if start else []

    def _add(self, n: int, copied: bool, reason: int = 0) -> None:
        n = max(0, min(n, len(self.body) - self.pos))  # units never cross the frame's end
        if not n:
            return
        last = self.pieces[-1] if self.pieces else None
        if last is not None and last.copied == copied and last.reason == reason \
                and last.start + last.length == self.pos:
            self.pieces[-1] = last._replace(length=last.length + n)
        else:
            self.pieces.append(Piece(self.pos, n, copied, reason))
        self.pos += n

    def copy(self, n: int) -> None:
        self._add(n, True)

    def skip(self, n: int, reason: int) -> None:
        self._add(n, False, reason)

    def field(self, width: int) -> int:
        raw = self.body[self.pos:self.pos + width]
        self.copy(width)
        return int.from_bytes(raw, "big", signed=True) if len(raw) == width else 0

    def varint(self) -> int:
        value = shift = 0
        for _ in range(5):
            if self.pos >= len(self.body):
                break
            b = self.body[self.pos]
            self.copy(1)
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return value

    @property
    def left(self) -> int:
        return len(self.body) - self.pos


def _walk_records(b: _Body, size: int, record_prefix: int) -> None:
    rec = size
    while rec > 0 and b.left:
        if rec < 12:
            b.copy(rec)
            return
        b.copy(8)
        length = b.field(4)
        rec -= 12
        span = min(max(length, 0), rec)
        head = min(span, BATCH_HEADER - 12)
        records = span - head
        if record_prefix and head == BATCH_HEADER - 12:
            b.copy(9)
            attributes = b.field(2)
            b.copy(38)
            if attributes & 7 == 0:
                prefix = min(record_prefix, records)
                b.copy(prefix)
                records -= prefix
                rec -= prefix
        else:
            b.copy(head)
        rec -= head
        b.skip(records, SKIP_RECORDS)
        rec -= records


def walk(ops: list[Op], body: bytes, head: int, record_prefix: int = 0) -> list[Piece]:
    """The pieces the kernel makes of a frame body (without its size field) whose first `head`
    bytes (api key, version, correlation id; or the correlation id) were read to pick `ops`."""
    b = _Body(body, head)
    loops: list[list[int]] = []  # [count left, body pc]
    pc = 0
    while pc < len(ops) and b.left:
        op, arg = ops[pc]
        if op == OP_COPY:
            b.copy(arg)
        elif op == OP_STR16:
            n = b.field(2)
            b.copy(max(n, 0))
        elif op == OP_CSTR:
            n = b.varint()
            b.copy(max(n - 1, 0))
        elif op == OP_TAGS:
            for _ in range(b.varint()):
                b.varint()
                b.copy(b.varint())
        elif op in (OP_ARRAY, OP_CARRAY):
            n = b.field(4) if op == OP_ARRAY else b.varint() - 1
            if n <= 0:
                pc += arg + 2
                continue
            loops.append([n, pc + 1])
        elif op == OP_END:
            loops[-1][0] -= 1
            if loops[-1][0]:
                pc = loops[-1][1]
                continue
            loops.pop()
        elif op in (OP_RECORDS, OP_CRECORDS):
            n = b.field(4) if op == OP_RECORDS else b.varint() - 1
            if n > 0:
                _walk_records(b, n, record_prefix)
        elif op == OP_SKIP_REST:
            b.skip(b.left, SKIP_SASL)
        else:  # OP_STOP
            break
        pc += 1
    b.copy(b.left)
    return b.pieces


_i32 = struct.Struct(">i").unpack_from
_hhi = struct.Struct(">hhi").unpack_from


class ConnectionDigest:
    """What the kernel keeps per connection for the digest: requests whose responses have a layout
    (correlation id -> (api key, version)), and whether the next frame of a direction is a raw SASL
    token (after a SaslHandshake v0)."""

    __slots__ = ("inflight", "raw_next")

    def __init__(self) -> None:
        self.inflight: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self.raw_next = {True: False, False: False}  # is_request -> flag

    def push(self, corr: int, api_key: int, version: int) -> None:
        if len(self.inflight) >= INFLIGHT:
            self.inflight.popitem(last=False)  # the oldest slot is overwritten
        self.inflight[corr] = (api_key, version)

    def match(self, corr: int) -> tuple[int, int] | None:
        """The request a response answers; the ones before it are forgotten (Kafka answers in order)."""
        if corr not in self.inflight:
            return None
        while True:
            key, value = self.inflight.popitem(last=False)
            if key == corr:
                return value


def frame_pieces(frame: bytes, is_request: bool, table: dict, conn: ConnectionDigest,
                 record_prefix: int = 0) -> list[Piece]:
    """The pieces of one whole frame (size field included) as the kernel makes them."""
    body = frame[4:]
    whole = [Piece(0, len(frame), True)]
    if conn.raw_next[is_request]:
        conn.raw_next[is_request] = False
        return [Piece(0, 4, True), Piece(4, len(body), False, SKIP_SASL)] if body else whole
    if is_request:
        if len(body) < 8:
            return whole
        api_key, version, corr = _hhi(body, 0)
        if (True, api_key, version) in table:
            conn.push(corr, api_key, version)
        if api_key == SASL_HANDSHAKE and version == 0:
            conn.raw_next[True] = True
        ops, head = table.get((False, api_key, version)), 8
    else:
        if len(body) < 4:
            return whole
        (corr,) = _i32(body, 0)
        key = conn.match(corr)
        if key == (SASL_HANDSHAKE, 0):
            conn.raw_next[False] = True
        ops, head = (table.get((True, *key)) if key else None), 4
    if ops is None:
        return whole
    pieces = [Piece(0, 4, True)] + [p._replace(start=p.start + 4) for p in walk(ops, body, head, record_prefix)]
    merged: list[Piece] = []
    for p in pieces:
        if merged and merged[-1].copied and p.copied and merged[-1].start + merged[-1].length == p.start:
            merged[-1] = merged[-1]._replace(length=merged[-1].length + p.length)
        else:
            merged.append(p)
    return merged


def digest_streams(events, mode: str = "digest", record_prefix: int = 0, server_conns=frozenset(),
                   fused: bool = False):
    """Complete captured streams (StreamData without gaps, as the recording proxy writes them) turned
    into what a capture in `mode` gives: per frame, StreamData runs and StreamGap(RECORDS_SKIPPED or
    SASL) ranges, or (`fused`, as the live capture sends them) one StreamData with its `skips`.
    The reference for the kernel's digest, and the way tests make digests of recorded traffic."""
    from .reassembly import SKIP_REASONS as reasons
    from .streams import ConnectionClosed, Direction, StreamData, StreamGap

    table = layouts_for(mode)
    buffers: dict[tuple[int, int], list] = {}  # (conn, direction) -> [bytearray, stream offset of [0], ts]
    conns: dict[int, ConnectionDigest] = {}
    out = []
    for e in events:
        if not isinstance(e, StreamData):
            if isinstance(e, ConnectionClosed):
                conns.pop(e.conn_id, None)
            out.append(e)
            continue
        buf = buffers.setdefault((e.conn_id, e.direction), [bytearray(), e.offset, e.ts_ns])
        if not buf[0]:
            buf[1], buf[2] = e.offset, e.ts_ns
        buf[0] += e.data
        is_request = (e.direction == Direction.SEND) != (e.conn_id in server_conns)
        conn = conns.setdefault(e.conn_id, ConnectionDigest())
        while len(buf[0]) >= 4:
            size = _i32(buf[0], 0)[0]
            if len(buf[0]) < 4 + size:
                break
            frame = bytes(buf[0][:4 + size])
            start = buf[1]
            pieces = frame_pieces(frame, is_request, table, conn, record_prefix)
            if fused and any(not p.copied for p in pieces):
                data, skips = bytearray(), []
                for p in pieces:
                    if p.copied:
                        data += frame[p.start:p.start + p.length]
                    else:
                        skips.append((len(data), p.length))
                reason = reasons[next(p.reason for p in pieces if not p.copied)]
                out.append(StreamData(e.conn_id, e.direction, buf[2], start, bytes(data), True, e.ts_ns,
                                      tuple(skips), reason))
                pieces = []
            for p in pieces:
                if p.copied:
                    out.append(StreamData(e.conn_id, e.direction, buf[2], start + p.start,
                                          frame[p.start:p.start + p.length], p.start == 0, e.ts_ns))
                else:
                    out.append(StreamGap(e.conn_id, e.direction, e.ts_ns, start + p.start, p.length,
                                         reasons[p.reason]))
            del buf[0][:4 + size]
            buf[1] += 4 + size
            buf[2] = e.ts_ns
    return out
