"""Run the live capture in a background thread and collect the stream events it produces."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from otel_kafka_ebpf.capture.live import LiveCapture
from otel_kafka_ebpf.capture.loader import CaptureSettings
from otel_kafka_ebpf.capture.streams import (
    ConnectionClosed,
    ConnectionOpened,
    Direction,
    StreamData,
    StreamEvent,
    StreamGap,
)


@dataclass
class CapturedConnection:
    opened: ConnectionOpened
    closed: bool = False
    # per direction: list of (offset, bytes | int gap length, gap reason or None)
    pieces: dict[Direction, list] = field(default_factory=lambda: {Direction.SEND: [], Direction.RECV: []})

    def stream(self, direction: Direction) -> tuple[bytes, list[tuple[int, int]]]:
        """Bytes with gaps filled by zeros, and the gap ranges (offset, length)."""
        buf = bytearray()
        gaps = []
        for offset, piece, _ in self.pieces[direction]:
            assert offset == len(buf), f"stream not contiguous at {offset} (have {len(buf)})"
            if isinstance(piece, int):
                gaps.append((offset, piece))
                buf.extend(b"\0" * piece)
            else:
                buf.extend(piece)
        return bytes(buf), gaps

    def runs(self, direction: Direction, upto: int | None = None) -> list[tuple[int, int, object]]:
        """(offset, length, copied bytes or the gap reason) of a direction, adjacent runs of a kind
        merged: how the kernel cut its events does not matter, only what it copied and skipped."""
        return merge_runs(self.pieces[direction], upto)

    def end(self, direction: Direction) -> int:
        return max((o + (p if isinstance(p, int) else len(p)) for o, p, _ in self.pieces[direction]), default=0)


def merge_runs(pieces, upto: int | None = None) -> list[tuple[int, int, object]]:
    """(offset, bytes | gap length, reason) pieces as runs, adjacent pieces of a kind merged."""
    out: list[list] = []
    for offset, piece, reason in pieces:
        if upto is not None and offset >= upto:
            break
        copied = not isinstance(piece, int)
        length = len(piece) if copied else piece
        if upto is not None:
            length = min(length, upto - offset)
        value = bytes(piece[:length]) if copied else reason
        last = out[-1] if out else None
        if last is not None and last[0] + last[1] == offset and (
                copied and isinstance(last[2], bytes) or not copied and last[2] == reason):
            last[1] += length
            last[2] = last[2] + value if copied else reason
        else:
            out.append([offset, length, value])
    return [tuple(r) for r in out]


def pieces_of(e: StreamData) -> list[tuple[int, object, object]]:
    """(offset, bytes | skipped length, None | skip reason) of a data event, its skips apart."""
    if not e.skips:
        return [(e.offset, e.data, None)]
    out = []
    pos, prev = e.offset, 0
    for at, n in e.skips:
        if at > prev:
            out.append((pos, e.data[prev:at], None))
            pos += at - prev
        out.append((pos, n, e.skip_reason))
        pos += n
        prev = at
    if prev < len(e.data):
        out.append((pos, e.data[prev:], None))
    return out


def declared_skips(events) -> list[tuple[int, Direction, int, int, object]]:
    """(conn_id, direction, offset, length, reason) of every range left in the kernel on purpose,
    whether an event says it as a StreamGap or as a StreamData's skips."""
    out = []
    for e in events:
        if isinstance(e, StreamGap) and e.length and not e.reason.is_loss:
            out.append((e.conn_id, e.direction, e.offset, e.length, e.reason))
        elif isinstance(e, StreamData) and e.skips:
            out.extend((e.conn_id, e.direction, o, p, r) for o, p, r in pieces_of(e) if isinstance(p, int))
    return out


def connections_of(events) -> dict[int, CapturedConnection]:
    """The connections in a list of stream events, with their pieces."""
    conns: dict[int, CapturedConnection] = {}
    for e in events:
        if isinstance(e, ConnectionOpened):
            conns[e.conn_id] = CapturedConnection(e)
        elif isinstance(e, StreamData):
            conns[e.conn_id].pieces[e.direction].extend(pieces_of(e))
        elif isinstance(e, StreamGap):
            if e.length:
                conns[e.conn_id].pieces[e.direction].append((e.offset, e.length, e.reason))
        elif isinstance(e, ConnectionClosed):
            if e.conn_id in conns:
                conns[e.conn_id].closed = True
    return conns


class BackgroundCapture:
    """The agent attached for the duration of a `with`, its events kept in `events` or handed to `on_event`."""

    def __init__(self, settings: CaptureSettings | None = None, on_event: Callable[[StreamEvent], None] | None = None):
        # tests compare everything captured with an oracle: drain the ring buffer fully at the end
        self.live = LiveCapture(settings or CaptureSettings(), on_ready=self._ready, drain_s=20)
        self._ready_evt = threading.Event()
        self.events: list = []
        self._on_event = on_event or self.events.append
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ready(self) -> None:
        self._ready_evt.set()

    def _run(self) -> None:
        try:
            for event in self.live:
                self._on_event(event)
        except BaseException as exc:  # surfaced to the test in stop()
            self.error = exc
            self._ready_evt.set()

    def __enter__(self) -> "BackgroundCapture":
        self._thread.start()
        if not self._ready_evt.wait(60):
            raise RuntimeError("capture did not start within 60 s")
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()
        self._thread.join(30)
        if self.error:
            raise self.error

    @property
    def counters(self) -> dict[str, int]:
        return self.live.counters

    def connections(self) -> dict[int, CapturedConnection]:
        return connections_of(self.events)
