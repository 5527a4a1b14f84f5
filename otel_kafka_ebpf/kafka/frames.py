"""Split one direction of a connection into Kafka frames, across gaps of known length.

A Kafka frame is an int32 size and that many bytes. The splitter is fed the captured stream in
order (`feed_data`, `feed_gap`, `feed_skip`) and hands out `Frame` and `FrameLost` events
(`next_event`, `NEED_DATA` when it has none). A skip (bytes the capture left in the kernel on
purpose, such as the records of a digest) inside a frame is no loss: the frame comes out whole,
its captured bytes in `payload` and the skipped ranges in `skips`. A gap inside a frame whose size
prefix was seen costs that frame only: the next boundary is known. A gap that swallows a size prefix loses the boundary; the
splitter then hunts for the next frame start with a `FrameValidator` supplied by the connection
(which knows the client id, the api versions in use and the outstanding correlation ids), and
drops every byte before it. It never raises on stream content and always makes progress.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple, Protocol

__all__ = ["NEED_DATA", "NeedData", "Frame", "FrameLost", "FrameSplitter", "FrameValidator", "ACCEPT", "REJECT",
           "NEED_MORE"]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
NeedData = _NeedData  # the type of NEED_DATA, for annotations

MIN_FRAME = 4  # a response header is 4 bytes; anything shorter is not a Kafka frame
MAX_FRAME = 256 << 20  # well beyond any broker's socket.request.max.bytes / fetch.max.bytes default
_i32 = struct.Struct(">i").unpack_from
# Hunting for a frame start: a candidate whose frame (and the next header) would end further than
# MAX_HUNT bytes on is not waited for, and at most MAX_WAITING candidates wait at once, so garbage
# that looks like frame sizes costs bounded memory and linear time.
MAX_HUNT = 16 << 20
MAX_WAITING = 16

ACCEPT, REJECT, NEED_MORE = 1, 0, 2
_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)


class Frame(NamedTuple):
    offset: int  # stream offset of the size prefix
    payload: memoryview  # the bytes after the size prefix (a view: not copied when in one chunk)
    first_ts_ns: int  # capture time of the first byte
    last_ts_ns: int  # capture time of the last byte
    # (position in payload, frame bytes skipped there) for each range the capture did not copy on
    # purpose (a digest's record payloads); () when payload is the whole frame
    skips: tuple = ()


class FrameLost(NamedTuple):
    """A frame whose size prefix was captured but some of whose bytes were not."""

    offset: int
    size: int  # payload size from the prefix
    head: bytes  # the captured payload bytes before the gap (the header, with luck)
    first_ts_ns: int
    last_ts_ns: int


class FrameValidator(Protocol):
    window: int  # bytes from a candidate start that `find` needs for its quick test

    def find(self, buf: bytes, start: int) -> int:
        """Smallest position >= start that may start a frame, or the first one whose window is incomplete."""

    def check(self, buf: bytes, pos: int) -> int:
        """ACCEPT, REJECT, or NEED_MORE when the bytes after `pos` cannot decide yet."""


class FrameSplitter:
    __slots__ = ("_chunks", "_avail", "_pos", "_end", "_size", "_skip", "_hunting", "_frame_offset",
                 "_frame_ts", "_holes", "_hole_bytes", "_hole_ts", "_candidates", "_scanned", "_hunt_need",
                 "_mirror", "_out", "validator", "max_hunt", "frames", "lost_frames", "skipped_bytes", "gap_bytes",
                 "resyncs", "bad_sizes", "overlaps", "dropped_candidates", "declared_skips")

    def __init__(self, validator: FrameValidator | None = None, *, max_hunt: int = MAX_HUNT) -> None:
        self._chunks: deque[list] = deque()  # [memoryview, first ts_ns, last ts_ns], oldest first
        self._avail = 0  # bytes buffered
        self._pos = 0  # stream offset of the first buffered byte
        self._end = 0  # stream offset after the last byte or gap seen
        self._size = -1  # payload size of the frame being assembled, -1 before its prefix
        self._skip = 0  # bytes of a lost frame still to drop
        self._hunting = False
        self._frame_offset = 0  # stream offset of the current frame's size prefix
        self._frame_ts = 0  # capture time of that prefix
        self._holes: list[tuple[int, int]] = []  # declared skips inside the current frame: (payload pos, length)
        self._hole_bytes = 0
        self._hole_ts = 0
        self._candidates: list[tuple[int, int]] = []  # hunting: (position, bytes needed) awaiting data
        self._scanned = 0  # hunting: buffer positions below this were examined
        self._hunt_need = 0  # hunting: buffered bytes needed before hunting again can decide anything
        self._mirror: bytearray | None = None  # hunting: the buffered bytes in one piece
        self._out: deque = deque()
        self.validator = validator
        self.max_hunt = max_hunt
        # counters, never exceptions
        self.frames = 0
        self.lost_frames = 0
        self.skipped_bytes = 0  # captured bytes dropped while hunting for a frame start
        self.gap_bytes = 0  # bytes the capture reported missing
        self.resyncs = 0
        self.bad_sizes = 0
        self.overlaps = 0
        self.dropped_candidates = 0  # hunting: possible frame starts given up undecided
        self.declared_skips = 0  # bytes inside frames the capture skipped on purpose (not losses)

    @property
    def events(self) -> deque:
        """The pending Frame/FrameLost events, oldest first; a consumer may pop them directly."""
        return self._out

    @property
    def in_sync(self) -> bool:
        return not self._hunting

    @property
    def stream_end(self) -> int:
        return self._end

    def lose_sync(self) -> None:
        """The consumer found the last frame not to be Kafka: hunt from the bytes buffered now."""
        self._size = -1
        self._skip = 0
        self._hunting = True
        self._candidates = []
        self._scanned = 0
        self._hunt_need = 0
        if self._holes:  # bytes around holes are not a stream to hunt in
            self._discard()
            self._clear_holes()
        self._drain()

    def feed_data(self, offset: int, data, ts_ns: int, frame_start: bool = False,
                  last_ts_ns: int | None = None, skips: tuple = ()) -> None:
        """Append captured bytes at `offset`, moved by syscalls from `ts_ns` to `last_ts_ns` (None: the
        same); `frame_start` says the capture knows data[0] begins a frame, which ends a hunt at once
        (the kernel tracked the boundaries the gap hid from us). `skips`: (position in data, length)
        of stream ranges inside these bytes left out on purpose (a digest)."""
        last = ts_ns if last_ts_ns is None else last_ts_ns
        if skips:
            self._feed_digest(offset, data, ts_ns, frame_start, last, skips)
            return
        n = len(data)
        if offset != self._end:
            if offset > self._end:  # bytes the capture neither delivered nor reported
                self.feed_gap(self._end, offset - self._end, ts_ns)
            else:  # overlaps what we already have: keep only the new tail
                self.overlaps += 1
                cut = self._end - offset
                if cut >= n:
                    return
                data = memoryview(data)[cut:]
                n -= cut
                frame_start = False
        if n == 0:
            return
        view = memoryview(data)
        if self._hunting and frame_start:
            self._discard()
            self._pos = self._end
            self._hunting = False
            self.resyncs += 1
        if self._hunting:
            self._chunks.append([view, ts_ns, last])
            self._avail += n
            self._end += n
            if self._mirror is not None:
                try:
                    self._mirror += view
                except BufferError:  # a view of it is still held somewhere: rebuild when needed
                    self._mirror = None
            if self._avail >= self._hunt_need:  # else nothing could be decided yet
                self._drain()
            return
        if not self._avail and self._size < 0 and not self._skip and not self._hunting:
            # Fast path: at a frame boundary with nothing buffered, whole frames in this chunk are
            # handed out as views of it; only a trailing partial frame is buffered.
            pos = 0
            start = self._end
            out = self._out
            while n - pos >= 4:
                (size,) = _i32(view, pos)
                if size < MIN_FRAME or size > MAX_FRAME or n - pos - 4 < size:
                    break
                out.append(_new(Frame, (start + pos, view[pos + 4:pos + 4 + size], ts_ns, last, ())))
                pos += 4 + size
                self.frames += 1
            self._end += pos
            self._pos = self._end
            if pos == n:
                return
            view = view[pos:]
            n -= pos
        self._chunks.append([view, ts_ns, last])
        self._avail += n
        self._end += n
        self._drain()

    def _feed_digest(self, offset: int, data, ts_ns: int, frame_start: bool, last: int, skips: tuple) -> None:
        """Captured bytes with skipped ranges inside. The capture sends one such event per frame: at a
        frame boundary, a whole frame is handed out as it is; anything else goes piece by piece."""
        if self._hunting and frame_start and offset == self._end:
            self._discard()
            self._pos = self._end
            self._hunting = False
            self.resyncs += 1
        if offset == self._end and not self._avail and self._size < 0 and not self._skip and not self._hunting \
                and len(data) >= 4:
            (size,) = _i32(data, 0)
            if len(skips) == 1:
                skipped = skips[0][1]
            else:
                skipped = 0
                for _, n in skips:
                    skipped += n
            if MIN_FRAME <= size <= MAX_FRAME and 4 + size == len(data) + skipped and skips[0][0] >= 4:
                self._out.append(_new(Frame, (offset, memoryview(data)[4:], ts_ns, last,
                                              ((skips[0][0] - 4, skips[0][1]),) if len(skips) == 1 else
                                              tuple((at - 4, n) for at, n in skips))))
                self.frames += 1
                self.declared_skips += skipped
                self._end += 4 + size
                self._pos = self._end
                return
        pos = offset
        prev = 0
        for at, n in skips:
            if at > prev:
                self.feed_data(pos, memoryview(data)[prev:at], ts_ns, frame_start and prev == 0, last)
                pos += at - prev
            self.feed_skip(pos, n, last)
            pos += n
            prev = at
        if prev < len(data):
            self.feed_data(pos, memoryview(data)[prev:], ts_ns, False, last)

    def feed_skip(self, offset: int, length: int, ts_ns: int) -> bool:
        """`length` bytes at `offset` the capture did not copy on purpose, inside the frame being
        assembled: a hole in it, not a loss. True if taken so; anything else is a gap (False)."""
        if offset == self._end and length > 0 and self._size >= 0 and not self._hunting and not self._skip \
                and self._avail + self._hole_bytes + length <= self._size:
            holes = self._holes
            if holes and holes[-1][0] == self._avail:  # one range cut across two capture events
                holes[-1] = (self._avail, holes[-1][1] + length)
            else:
                holes.append((self._avail, length))
            self._hole_bytes += length
            self._hole_ts = ts_ns
            self._end += length
            self.declared_skips += length
            self._drain()
            return True
        self.feed_gap(offset, length, ts_ns)
        return False

    def feed_gap(self, offset: int, length: int, ts_ns: int) -> None:
        if offset > self._end:
            length += offset - self._end
        elif offset < self._end:
            self.overlaps += 1
            length -= self._end - offset
        if length <= 0:
            return
        self.gap_bytes += length
        self._end += length
        # _drain() ran after the last data, so the buffer holds at most one unfinished frame.
        if self._hunting:
            self._discard()
        elif self._skip:
            taken = min(self._skip, length)
            self._skip -= taken
            if length > taken:
                self._hunt_after_gap()
        elif self._size >= 0:
            remaining = self._size - self._avail - self._hole_bytes
            self._lose_frame()
            if length <= remaining:
                self._skip = remaining - length
            else:
                self._hunt_after_gap()
        elif self._avail or length:
            self._hunt_after_gap()  # the gap holds (part of) a size prefix: the boundary is lost
        self._pos = self._end - self._avail

    def end(self) -> None:
        """The stream ended: a frame begun but not complete becomes a FrameLost (its size prefix and
        the bytes that came are known); anything else still buffered is counted as skipped."""
        if self._size >= 0 and not self._hunting:
            self._lose_frame()
        self._discard()

    def next_event(self):
        """The next Frame or FrameLost, or NEED_DATA."""
        if self._out:
            return self._out.popleft()
        return NEED_DATA

    # --- internals ---------------------------------------------------------------------------

    def _lose_frame(self) -> None:
        """The frame being assembled will not complete: hand out what came of it as a FrameLost."""
        last_ts = self._chunks[-1][2] if self._chunks else self._frame_ts
        if self._holes:
            last_ts = max(last_ts, self._hole_ts)
        head = self._take(self._avail)[0] if self._avail else b""
        self._out.append(FrameLost(self._frame_offset, self._size, bytes(head), self._frame_ts, last_ts))
        self.lost_frames += 1
        self._size = -1
        self._clear_holes()

    def _clear_holes(self) -> None:
        if self._holes:
            self._pos += self._hole_bytes  # the stream offset of the first buffered byte moves past them
            self._holes = []
            self._hole_bytes = 0

    def _hunt_after_gap(self) -> None:
        self._discard()
        self._clear_holes()
        self._size = -1
        self._skip = 0
        self._hunting = True

    def _discard(self) -> None:
        self.skipped_bytes += self._avail
        self._chunks.clear()
        self._avail = 0
        self._mirror = None
        self._candidates = []
        self._scanned = 0
        self._hunt_need = 0

    def _take(self, n: int):
        """Remove the first n buffered bytes: (a view if they lie in one chunk else a copy, last ts)."""
        chunks = self._chunks
        first = chunks[0]
        view = first[0]
        self._avail -= n
        self._pos += n
        if len(view) > n:
            first[0] = view[n:]
            return view[:n], first[2]
        if len(view) == n:
            chunks.popleft()
            return view, first[2]
        parts = []
        while n:
            c = chunks[0]
            v = c[0]
            ts = c[2]
            if len(v) <= n:
                parts.append(v)
                n -= len(v)
                chunks.popleft()
            else:
                parts.append(v[:n])
                c[0] = v[n:]
                n = 0
        return memoryview(b"".join(parts)), ts

    def _drop(self, n: int) -> None:
        chunks = self._chunks
        self._avail -= n
        self._pos += n
        if self._mirror is not None:
            try:
                del self._mirror[:n]
            except BufferError:
                self._mirror = None
        while n:
            c = chunks[0]
            v = c[0]
            if len(v) <= n:
                n -= len(v)
                chunks.popleft()
            else:
                c[0] = v[n:]
                n = 0

    def _peek(self, n: int) -> bytes:
        out = bytearray()
        for v, _, _ in self._chunks:
            out += v[: n - len(out)]
            if len(out) >= n:
                break
        return bytes(out)

    def _drain(self) -> None:
        chunks = self._chunks
        out = self._out
        while True:
            if self._hunting:
                if not self._hunt():
                    return
            if self._skip:
                n = min(self._skip, self._avail)
                self._drop(n)
                self._skip -= n
                if self._skip:
                    return
            if self._size < 0:
                if self._avail < 4:
                    return
                head = chunks[0][0]
                size = _i32(head if len(head) >= 4 else self._peek(4), 0)[0]
                if size < MIN_FRAME or size > MAX_FRAME:
                    self.bad_sizes += 1
                    self._hunting = True
                    self._candidates = []
                    self._scanned = 1  # this position is known bad: progress is guaranteed
                    self._hunt_need = 0
                    continue
                self._frame_offset = self._pos
                self._frame_ts = chunks[0][1]
                self._drop(4)
                self._size = size
            size = self._size
            if self._holes:
                if self._avail + self._hole_bytes < size:
                    return
                self._emit_with_holes(size)
                continue
            if self._avail < size:
                return
            payload, last_ts = self._take(size)
            out.append(Frame(self._frame_offset, payload, self._frame_ts, last_ts))
            self.frames += 1
            self._size = -1

    def _emit_with_holes(self, size: int) -> None:
        """The frame being assembled is complete: its captured bytes, and where the skips were."""
        captured = size - self._hole_bytes
        if captured:
            payload, last_ts = self._take(captured)
            last_ts = max(last_ts, self._hole_ts)
        else:
            payload, last_ts = memoryview(b""), self._hole_ts
        self._out.append(Frame(self._frame_offset, payload, self._frame_ts, last_ts, tuple(self._holes)))
        self.frames += 1
        self._size = -1
        self._clear_holes()

    def _hunt(self) -> bool:
        """Look for a frame start in the buffer; True when found (the buffer then starts there).

        Candidates that pass the quick test but whose frame is still incomplete wait in
        `_candidates`; scanning goes on past them, so one false candidate announcing a huge
        frame cannot stall the stream: a later candidate that validates completely wins.
        """
        validator = self.validator
        if validator is None or not self._avail:
            self._discard()
            return False
        if self._mirror is None or len(self._mirror) != self._avail:
            self._mirror = bytearray(self._peek(self._avail))
        blob = self._mirror  # not copied: validators keep no views of it once they return
        n = len(blob)
        window = validator.window
        waiting = []  # (position, buffered length needed before checking it again)
        for p, need in self._candidates:
            if n < need:
                waiting.append((p, need))
                continue
            verdict = validator.check(blob, p)
            if verdict == ACCEPT and self._resync_at(p):
                return True
            if verdict == NEED_MORE:
                self._wait_for(waiting, blob, p, n)
        p = self._scanned
        while p < n:
            p = validator.find(blob, p)
            if p >= n or n - p < window:
                break  # from here on the quick test lacks bytes: resume here with more data
            verdict = validator.check(blob, p)
            if verdict == ACCEPT and self._resync_at(p):
                return True
            if verdict == NEED_MORE:
                self._wait_for(waiting, blob, p, n)
            p += 1
        if len(waiting) > MAX_WAITING:  # the candidates that resolve soonest stay; the rest were unlikely
            waiting.sort(key=lambda c: c[1])
            self.dropped_candidates += len(waiting) - MAX_WAITING
            del waiting[MAX_WAITING:]
        p = min(p, n)
        keep = min([p] + [c for c, _ in waiting])  # every position before this one is rejected
        self.skipped_bytes += keep
        self._drop(keep)
        self._candidates = [(c - keep, need - keep) for c, need in waiting]
        self._scanned = p - keep
        # Hunt again only once a waiting frame (and the header after it) or a new scan window is
        # complete: each byte is scanned once and each candidate checked once per decision point.
        self._hunt_need = min([self._scanned + window] + [c_need for _, c_need in self._candidates])
        return False

    def _wait_for(self, waiting: list, blob: bytes, p: int, n: int) -> None:
        """Keep candidate p until the bytes that decide it (its frame and the next header) arrive,
        unless that is beyond `max_hunt`: such a candidate could never be decided, only held."""
        need = p + 4 + max(0, _i32(blob, p)[0]) + self.validator.window
        if need - p <= self.max_hunt:
            waiting.append((p, max(n + 1, need)))
        else:
            self.dropped_candidates += 1

    def _resync_at(self, p: int) -> bool:
        # callers only pass positions with 4 bytes buffered; a size the splitter would refuse is
        # never accepted, whatever the validator says (that would loop)
        if not MIN_FRAME <= _i32(self._mirror, p)[0] <= MAX_FRAME:
            return False
        self._mirror = None
        self.skipped_bytes += p
        self._drop(p)
        self._hunting = False
        self._candidates = []
        self._scanned = 0
        self._hunt_need = 0
        self.resyncs += 1
        return True
