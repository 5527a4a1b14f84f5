"""Versioned recording files of captured streams (`record --out FILE`, `replay FILE`).

Format, version 2: gzip-compressed UTF-8 JSON lines. The first line is a header
``{"format": "otel-kafka-ebpf-recording", "version": 2, ...}``; each further line is one
stream event with a type tag ``t`` (open, data, gap, close), or a note (``t`` note: a fact a later
stage recorded beside the streams, such as a process's identity). Payload bytes are base64.
A reader accepts any version it knows and refuses others with one clear error.

Version 2 (the digest capture) adds to version 1: a data event's ``te``, the time of the last
syscall when several moved its bytes, its ``sk`` (ranges left in the kernel on purpose, as
[position in the data, length]) and ``sr`` (why: RECORDS_SKIPPED or SASL), and those two gap
reasons. Version 1 files are read as they always were.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import IO

from .. import __version__
from .streams import (
    Annotation,
    ConnectionClosed,
    ConnectionOpened,
    Direction,
    GapReason,
    Role,
    StreamData,
    StreamEvent,
    StreamGap,
)

FORMAT_NAME = "otel-kafka-ebpf-recording"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class RecordingError(Exception):
    """A recording file that cannot be read; the message is one line for the user."""


def _encode(event: StreamEvent) -> dict:
    if isinstance(event, StreamData):
        obj = {"t": "data", "c": event.conn_id, "d": int(event.direction), "ts": event.ts_ns,
               "o": event.offset, "b": base64.b64encode(event.data).decode("ascii")}
        if event.frame_start:
            obj["fs"] = 1
        if event.last_ts_ns is not None:
            obj["te"] = event.last_ts_ns
        if event.skips:
            obj["sk"] = [list(s) for s in event.skips]
            obj["sr"] = int(event.skip_reason or GapReason.RECORDS_SKIPPED)
        return obj
    if isinstance(event, StreamGap):
        return {"t": "gap", "c": event.conn_id, "d": int(event.direction), "ts": event.ts_ns,
                "o": event.offset, "n": event.length, "r": int(event.reason)}
    if isinstance(event, ConnectionOpened):
        return {"t": "open", "c": event.conn_id, "ts": event.ts_ns, "pid": event.pid,
                "tid": event.tid, "comm": event.comm, "cgroup": event.cgroup_id,
                "netns": event.netns, "laddr": event.local_addr, "lport": event.local_port,
                "raddr": event.remote_addr, "rport": event.remote_port, "role": int(event.role)}
    if isinstance(event, ConnectionClosed):
        return {"t": "close", "c": event.conn_id, "ts": event.ts_ns}
    if isinstance(event, Annotation):
        return {"t": "note", "k": event.kind, "ts": event.ts_ns, "v": event.data}
    raise TypeError(f"not a stream event: {event!r}")


def _decode(obj: dict) -> StreamEvent:
    t = obj["t"]
    if t == "data":
        skips = tuple((int(at), int(n)) for at, n in obj.get("sk", ()))
        return StreamData(obj["c"], Direction(obj["d"]), obj["ts"], obj["o"], base64.b64decode(obj["b"]),
                          bool(obj.get("fs")), obj.get("te"), skips, GapReason(obj["sr"]) if skips else None)
    if t == "gap":
        return StreamGap(obj["c"], Direction(obj["d"]), obj["ts"], obj["o"], obj["n"], GapReason(obj["r"]))
    if t == "open":
        return ConnectionOpened(obj["c"], obj["ts"], obj["pid"], obj["tid"], obj["comm"], obj["cgroup"],
                                obj["netns"], obj["laddr"], obj["lport"], obj["raddr"], obj["rport"],
                                Role(obj["role"]))
    if t == "close":
        return ConnectionClosed(obj["c"], obj["ts"])
    if t == "note":
        if not isinstance(obj["v"], dict) or not isinstance(obj["k"], str):
            raise ValueError("a note holds a kind and a table")
        return Annotation(obj["k"], obj["ts"], obj["v"])
    raise ValueError(f"unknown event type {t!r}")


class RecordingWriter:
    """Append stream events to a recording file; use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, source: str = "live", extra: dict | None = None):
        self._fh: IO[str] = gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "agent": __version__,
                  "source": source, "created_ns": time.time_ns()}
        if extra:
            header.update(extra)
        self._fh.write(json.dumps(header, separators=(",", ":")) + "\n")
        self.events = 0

    def write(self, event: StreamEvent) -> None:
        self._fh.write(json.dumps(_encode(event), separators=(",", ":")) + "\n")
        self.events += 1

    def write_all(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            self.write(event)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_header(path: str | os.PathLike) -> dict:
    return next(_lines(path, header_only=True))


def read_recording(path: str | os.PathLike) -> Iterator[StreamEvent]:
    """Yield the events of a recording; a truncated tail (agent killed mid-write) ends the stream."""
    lines = _lines(path)
    next(lines)  # header, validated by _lines
    for lineno, obj in lines:
        try:
            yield _decode(obj)
        except (KeyError, ValueError, TypeError) as exc:
            raise RecordingError(f"{path}: line {lineno}: malformed event ({exc})") from None


def _lines(path: str | os.PathLike, header_only: bool = False):
    try:
        fh = gzip.open(path, "rt", encoding="utf-8")
        first = fh.readline()
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such recording file") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: not a recording file ({exc})") from None
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        raise RecordingError(f"{path}: not a recording file (bad header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise RecordingError(f"{path}: not an otel-kafka-ebpf recording")
    if header.get("version") not in READABLE_VERSIONS:
        raise RecordingError(f"{path}: recording format version {header.get('version')} is not supported "
                             f"(this agent reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    yield header
    if header_only:
        fh.close()
        return
    with fh:
        lineno = 1
        try:
            for line in fh:
                lineno += 1
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError:
                    return  # torn last line of an interrupted recording
        except (EOFError, OSError):
            return  # gzip stream cut short: keep what was read
