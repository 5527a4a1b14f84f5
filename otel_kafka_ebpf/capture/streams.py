"""The capture stage's output: connection lifecycle and ordered byte streams with explicit gaps.

Everything downstream (the decoder, recordings, replay) consumes only these types, whether they
came from the live kernel, a recording file or a test vector.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Direction(enum.IntEnum):
    """Direction of bytes relative to the traced process."""

    SEND = 0  # written by the traced process
    RECV = 1  # read by the traced process


class Role(enum.IntEnum):
    """Which end of the TCP connection the traced process is."""

    UNKNOWN = 0  # connection predates the agent; inferred from the first Kafka frame
    CLIENT = 1  # the process called connect()
    SERVER = 2  # the process called accept()


class GapReason(enum.IntEnum):
    BUDGET = 1  # per-frame capture budget exhausted
    RINGBUF_FULL = 2  # ring buffer had no room
    IOVEC_LIMIT = 3  # more iovecs than the walker follows
    USER_COPY = 4  # bpf_probe_read_user failed (page not resident)
    UNKNOWN_START = 5  # joined a stream mid-way (connection predates the agent)
    SENDFILE = 6  # sent from a file by sendfile() (a broker's Fetch records): never in user memory
    MISSED_RUN = 10  # moved by syscalls the BPF program never ran for (the kernel skipped it: recursion_misses)
    # Not losses: bytes the capture leaves in the kernel on purpose, inside a frame it tracks.
    RECORDS_SKIPPED = 7  # the records after a record batch's header (digest capture)
    SASL = 8  # the body of a SaslHandshake/SaslAuthenticate frame or a raw SASL token (credentials)
    HEADS = 9  # a frame's body after its head: the fallback program (a kernel that refused the walker)

    @property
    def is_loss(self) -> bool:
        return self not in DECLARED_SKIPS


DECLARED_SKIPS = frozenset({GapReason.RECORDS_SKIPPED, GapReason.SASL, GapReason.HEADS})


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    conn_id: int
    ts_ns: int  # wall clock
    pid: int
    tid: int
    comm: str
    cgroup_id: int
    netns: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    role: Role = Role.UNKNOWN
    tls: str = ""  # whose TLS plaintext the stream is ("openssl", "go"); "undecoded": a TLS handshake, no plaintext


@dataclass(frozen=True, slots=True)
class StreamData:
    """Captured bytes of one direction from `offset` on. With `skips` (a digest capture), ranges of the
    stream inside them were left in the kernel on purpose, never a loss: (position in `data` where the
    range was, its length in stream bytes), ordered; the event then covers `wire_length` stream bytes."""

    conn_id: int
    direction: Direction
    ts_ns: int  # wall clock of the (first) syscall that moved these bytes
    offset: int  # position of data[0] in this direction's stream
    data: bytes
    frame_start: bool = False  # the capture knows data[0] begins a Kafka frame (its size field)
    last_ts_ns: int | None = None  # wall clock of the last syscall, when several moved them (else ts_ns)
    skips: tuple[tuple[int, int], ...] = ()
    skip_reason: GapReason | None = None  # why the skips were not copied (RECORDS_SKIPPED, SASL or HEADS)

    @property
    def end_ts_ns(self) -> int:
        return self.ts_ns if self.last_ts_ns is None else self.last_ts_ns

    @property
    def wire_length(self) -> int:
        """Stream bytes the event covers: the data and the skipped ranges."""
        return len(self.data) + sum(n for _, n in self.skips) if self.skips else len(self.data)


@dataclass(frozen=True, slots=True)
class StreamGap:
    """`length` bytes at `offset` moved through the socket but were not captured: lost, or (a reason
    in DECLARED_SKIPS) left in the kernel on purpose inside a frame whose boundaries are tracked."""

    conn_id: int
    direction: Direction
    ts_ns: int
    offset: int
    length: int
    reason: GapReason


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    conn_id: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Annotation:
    """A fact a later stage wants kept beside the streams (a process's identity, a broker's Metadata
    that the agent asked for), so that a replay sees what the live run saw. Capture and recordings
    carry it and never read it."""

    kind: str
    ts_ns: int
    data: dict


StreamEvent = ConnectionOpened | StreamData | StreamGap | ConnectionClosed | Annotation
