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
    # per direction: list of (offset, bytes | int gap length)
    pieces: dict[Direction, list] = field(default_factory=lambda: {Direction.SEND: [], Direction.RECV: []})

    def stream(self, direction: Direction) -> tuple[bytes, list[tuple[int, int]]]:
        """Bytes with gaps filled by zeros, and the gap ranges (offset, length)."""
        buf = bytearray()
        gaps = []
        for offset, piece in self.pieces[direction]:
            assert offset == len(buf), f"stream not contiguous at {offset} (have {len(buf)})"
            if isinstance(piece, int):
                gaps.append((offset, piece))
                buf.extend(b"\0" * piece)
            else:
                buf.extend(piece)
        return bytes(buf), gaps


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
        conns: dict[int, CapturedConnection] = {}
        for e in self.events:
            if isinstance(e, ConnectionOpened):
                conns[e.conn_id] = CapturedConnection(e)
            elif isinstance(e, StreamData):
                conns[e.conn_id].pieces[e.direction].append((e.offset, e.data))
            elif isinstance(e, StreamGap):
                if e.length:
                    conns[e.conn_id].pieces[e.direction].append((e.offset, e.length))
            elif isinstance(e, ConnectionClosed):
                if e.conn_id in conns:
                    conns[e.conn_id].closed = True
        return conns
