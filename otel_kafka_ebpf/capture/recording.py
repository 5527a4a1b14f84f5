"""Versioned recording files of captured streams (`record --out FILE`, `replay FILE`).

Format, version 2: UTF-8 JSON lines, gzip-compressed. The first line is a header
``{"format": "otel-kafka-ebpf-recording", "version": 2, ...}``; each further line is one
stream event with a type tag ``t`` (open, data, gap, close), or a note (``t`` note: a fact a later
stage recorded beside the streams, such as a process's identity). Payload bytes are base64.

Version 2 (the digest capture) adds to version 1: a data event's ``te``, the time of the last
syscall when several moved its bytes, its ``sk`` (ranges left in the kernel on purpose, as
[position in the data, length]) and ``sr`` (why: RECORDS_SKIPPED or SASL), and those two gap
reasons. Version 1 files are read as they always were.

The writer appends whole lines as one gzip member at a time (at least once a second), so a
recording whose writer was killed keeps everything up to its last second, and each member's
CRC is checked before any of its lines is used. Its header says ``"end_mark": true``: its last
line is then a note of kind ``end`` counting the events, and a recording without it was not
closed (its writer was killed). A reader accepts any version it knows and
refuses others with one clear error. It is strict: a line whose fields are not what its type
says (an offset that is not a non-negative integer, bad base64, an unknown direction...) is
skipped and counted, never handed on; damage to the gzip stream ends the reading there. What
was skipped or lost is in `RecordingReader.damage()`, one line for the user.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
import zlib
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
END = "end"  # the kind of the note that closes a recording: {"events": how many came before it}

FLUSH_S = 1.0  # a member is written at least this often while events come
FLUSH_BYTES = 1 << 20  # and whenever this much text is waiting
MAX_LINE = 256 << 20  # longer is damage (the longest real line, a broker's Metadata as hex, is far shorter)
MAX_UNVERIFIED = 16 << 20  # text of one gzip member held back until its CRC is checked (older writers: one member)
_READ = 1 << 16
_INFLATE = 1 << 20  # text inflated per call at most (a small file may inflate to gigabytes)
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


class RecordingError(Exception):
    """A recording file that cannot be read at all; the message is one line for the user."""


class BadLine(ValueError):
    """A line that is not a valid event; the message says why."""


# --- writing ---------------------------------------------------------------------------------------

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
                "raddr": event.remote_addr, "rport": event.remote_port, "role": int(event.role),
                **({"tls": event.tls} if event.tls else {})}
    if isinstance(event, ConnectionClosed):
        return {"t": "close", "c": event.conn_id, "ts": event.ts_ns}
    if isinstance(event, Annotation):
        return {"t": "note", "k": event.kind, "ts": event.ts_ns, "v": event.data}
    raise TypeError(f"not a stream event: {event!r}")


class RecordingWriter:
    """Append stream events to a recording file (created mode 0600: it holds message contents).
    Use as a context manager; `flush_if_due()` from a timer keeps a quiet recording current."""

    def __init__(self, path: str | os.PathLike, *, source: str = "live", extra: dict | None = None):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
        except OSError:
            pass  # not ours to change (a device, another owner's file): writing is still allowed
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "agent": __version__,
                  "source": source, "created_ns": time.time_ns(), "end_mark": True}
        if extra:
            header.update(extra)
        self._add(header)
        self.flush()
        self.events = 0

    def _add(self, obj: dict) -> None:
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        self._pending.append(line)
        self._pending_bytes += len(line)

    def write(self, event: StreamEvent) -> None:
        self._add(_encode(event))
        self.events += 1
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        else:
            self.flush_if_due()

    def write_all(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            self.write(event)

    def flush_if_due(self) -> None:
        if self._pending and time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines as one complete gzip member."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._fh.write(gzip.compress(data, compresslevel=6, mtime=0))
        self._fh.flush()

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._add(_encode(Annotation(END, time.time_ns(), {"events": self.events})))
            self.flush()
        finally:
            self._fh.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- reading: lines ----------------------------------------------------------------------------------

def _int(obj: dict, key: str, hi: int = _U64) -> int:
    v = obj.get(key)
    if type(v) is not int or not 0 <= v <= hi:  # bool is an int subclass: refused too
        raise BadLine(f"{key!r} is not an integer from 0 to {hi}" if key in obj else f"no {key!r}")
    return v


def _str(obj: dict, key: str, longest: int = 4096) -> str:
    v = obj.get(key)
    if type(v) is not str or len(v) > longest:
        raise BadLine(f"{key!r} is not a string of at most {longest} characters" if key in obj else f"no {key!r}")
    return v


def _enum(obj: dict, key: str, enum):
    v = _int(obj, key, _U32)
    try:
        return enum(v)
    except ValueError:
        raise BadLine(f"{key!r}: {v} is not a known {enum.__name__}") from None


def _skips(obj: dict, size: int) -> tuple:
    """A data event's ranges left in the kernel: [position in the data, length] pairs, in order."""
    raw = obj.get("sk", [])
    if type(raw) is not list:
        raise BadLine("'sk' is not a list")
    skips = []
    last = 0
    for item in raw:
        if type(item) is not list or len(item) != 2 or any(type(v) is not int for v in item):
            raise BadLine("'sk' holds something other than [position, length] pairs")
        at, n = item
        if not last <= at <= size or not 0 < n <= _U64:
            raise BadLine("'sk' ranges are not in order inside the data")
        skips.append((at, n))
        last = at
    return tuple(skips)


def _decode(obj) -> StreamEvent:
    """The event a parsed line holds, every field checked; BadLine says what is wrong."""
    if type(obj) is not dict:
        raise BadLine("not a JSON object")
    t = obj.get("t")
    if t == "data":
        offset, text = _int(obj, "o"), _str(obj, "b", MAX_LINE)
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error, or characters that are not ASCII
            raise BadLine("'b' is not valid base64") from None
        if offset + len(data) > _U64:
            raise BadLine("'o' plus the data's length is beyond a stream's end")
        fs = obj.get("fs", 0)
        if fs not in (0, 1) or type(fs) not in (int, bool):
            raise BadLine("'fs' is not 0 or 1")
        te = obj.get("te")
        if te is not None:
            te = _int(obj, "te")
        skips = _skips(obj, len(data))
        return StreamData(_int(obj, "c"), _enum(obj, "d", Direction), _int(obj, "ts"), offset, data, bool(fs),
                          te, skips, _enum(obj, "sr", GapReason) if skips else None)
    if t == "gap":
        offset, length = _int(obj, "o"), _int(obj, "n")
        if offset + length > _U64:
            raise BadLine("'o' plus 'n' is beyond a stream's end")
        return StreamGap(_int(obj, "c"), _enum(obj, "d", Direction), _int(obj, "ts"), offset, length,
                         _enum(obj, "r", GapReason))
    if t == "open":
        return ConnectionOpened(_int(obj, "c"), _int(obj, "ts"), _int(obj, "pid", _U32), _int(obj, "tid", _U32),
                                _str(obj, "comm", 256), _int(obj, "cgroup"), _int(obj, "netns"),
                                _str(obj, "laddr", 64), _int(obj, "lport", 65535), _str(obj, "raddr", 64),
                                _int(obj, "rport", 65535), _enum(obj, "role", Role),
                                _str(obj, "tls", 16) if "tls" in obj else "")
    if t == "close":
        return ConnectionClosed(_int(obj, "c"), _int(obj, "ts"))
    if t == "note":
        if type(obj.get("v")) is not dict:
            raise BadLine("'v' is not a table")
        return Annotation(_str(obj, "k", 256), _int(obj, "ts"), obj["v"])
    raise BadLine(f"unknown event type {t!r}" if "t" in obj else "no event type 't'")


def _parse(line: bytes):
    """A line's JSON value; BadLine if it is not UTF-8 JSON."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; nesting too deep a RecursionError
        raise BadLine("not JSON") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


# --- reading: the gzip stream -----------------------------------------------------------------------

class _StreamDamage(Exception):
    """The gzip stream cannot be read from `at` (a compressed byte offset) on; `what` says how, with {at} in it."""

    def __init__(self, what: str, at: int) -> None:
        super().__init__(what)
        self.what = what
        self.at = at

    def where(self, size: int) -> str:
        return self.what.format(at=f"compressed byte {self.at} of {size}")


def _zlib_problem(exc: zlib.error) -> str:
    msg = str(exc)
    if "incorrect data check" in msg:
        return "corrupt gzip data (CRC check failed) in the member from {at}"
    if "incorrect length check" in msg:
        return "corrupt gzip data (length check failed) in the member from {at}"
    if "incorrect header check" in msg or "unknown compression method" in msg:
        return "bytes that are not gzip data from {at}"
    return "corrupt gzip data in the member from {at}"


def _gzip_text(raw: IO[bytes]) -> Iterator[bytes]:
    """The decompressed text of a (multi-member) gzip stream, a member at a time once its CRC is checked
    (a member larger than MAX_UNVERIFIED is handed on in parts as it comes). A stream cut short hands on
    what it holds (a prefix of deflate data decodes exactly), then raises _StreamDamage; corrupt data
    raises at the start of its member, whose text is never handed on."""
    pos = 0  # compressed bytes consumed
    member_start = 0
    d = None
    held = bytearray()
    data = b""
    full = False  # the last call filled its output: zlib may hold more for the input it took
    while True:
        if not data and not full:
            try:
                data = raw.read(_READ)
            except OSError as exc:
                raise _StreamDamage(f"a read error ({exc.strerror}) at {{at}}", pos) from None
            if not data:
                break
        if d is None:
            stripped = data.lstrip(b"\0")  # zero padding between or after members is allowed (as gzip does)
            pos += len(data) - len(stripped)
            data = stripped
            if not data:
                continue
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            member_start = pos
        try:
            out = d.decompress(data, _INFLATE)
        except zlib.error as exc:
            raise _StreamDamage(_zlib_problem(exc), member_start) from None
        full = len(out) == _INFLATE and not d.eof
        rest = d.unused_data if d.eof else d.unconsumed_tail
        pos += len(data) - len(rest)
        data = rest
        held += out
        if d.eof:
            d = None
            if held:
                yield bytes(held)
                held.clear()
        elif len(held) >= MAX_UNVERIFIED:
            yield bytes(held)
            held.clear()
    if d is not None:
        if held:
            yield bytes(held)
        raise _StreamDamage("cut short inside the gzip member from {at} (was its writer killed?)", member_start)


class RecordingReader:
    """The events of one recording, in order; iterate once. The header is read (and checked) at once:
    a file that is not a readable recording raises RecordingError here."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.lines = 0  # lines read, the header included
        self.events = 0  # events handed on
        self.bad_lines = 0
        self.first_bad: str | None = None  # "line N: why"
        self.stream_damage: str | None = None  # where and how the gzip stream stopped being readable
        self.end_events: int | None = None  # what the end mark counted, once read
        self.finished = False  # read to its end (or to damage that ends it)
        try:
            self._raw = open(path, "rb")
        except FileNotFoundError:
            raise RecordingError(f"{path}: no such recording file") from None
        except IsADirectoryError:
            raise RecordingError(f"{path}: is a directory, not a recording file") from None
        except OSError as exc:
            raise RecordingError(f"{path}: {exc.strerror}") from None
        self.size = os.fstat(self._raw.fileno()).st_size
        self._lines = self._split(_gzip_text(self._raw))
        try:
            first = next(self._lines, None)
        except _StreamDamage as exc:
            self.close()
            raise RecordingError(f"{path}: not a recording file ({exc.where(self.size)})") from None
        if first is None:
            self.close()
            raise RecordingError(f"{path}: not a recording file (empty)")
        self.header = self._check_header(first[1])
        self.expects_end = self.header.get("end_mark") is True

    def _check_header(self, line: bytes) -> dict:
        path = self.path
        try:
            header = _parse(line)
        except BadLine:
            header = None
        if type(header) is not dict or header.get("format") != FORMAT_NAME:
            self.close()
            raise RecordingError(f"{path}: not a recording file (no otel-kafka-ebpf recording header)")
        version = header.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            self.close()
            raise RecordingError(f"{path}: recording format version {version!r} is not supported "
                                 f"(this agent reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        return header

    def _split(self, chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
        """(line number, line without its newline); an over-long line is reported and skipped."""
        tail = bytearray()
        skipping = False  # inside an over-long line: drop until its end
        for chunk in chunks:
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if not skipping:
                        tail += chunk[start:]
                        if len(tail) > MAX_LINE:
                            tail.clear()
                            skipping = True
                    break
                self.lines += 1
                if skipping:
                    skipping = False
                    self._bad(self.lines, f"longer than {MAX_LINE} bytes")
                else:
                    if tail:
                        tail += chunk[start:end]
                        line = bytes(tail)
                        tail.clear()
                    else:
                        line = chunk[start:end]
                    yield self.lines, line
                start = end + 1
        if tail or skipping:  # the last line has no newline: the file was cut inside it
            self.lines += 1
            if skipping:
                self._bad(self.lines, f"longer than {MAX_LINE} bytes")
            else:
                yield self.lines, bytes(tail)

    def _bad(self, lineno: int, why: str) -> None:
        self.bad_lines += 1
        if self.first_bad is None:
            self.first_bad = f"line {lineno}: {why}"

    def __iter__(self) -> Iterator[StreamEvent]:
        try:
            for lineno, line in self._lines:
                try:
                    if self.end_events is not None:
                        raise BadLine("after the recording's end mark")
                    event = _decode(_parse(line))
                    if type(event) is Annotation and event.kind == END and self.expects_end:
                        self.end_events = _int(event.data, "events")
                        continue
                except BadLine as exc:
                    self._bad(lineno, str(exc))
                    continue
                self.events += 1
                yield event
            self.finished = True
        except _StreamDamage as exc:
            self.stream_damage = exc.where(self.size)
            self.finished = True
        finally:
            self.close()

    def close(self) -> None:
        self._raw.close()

    @property
    def unclosed(self) -> bool:
        """The whole file was read and its writer's end mark is not in it."""
        return self.finished and self.expects_end and self.end_events is None and self.stream_damage is None

    @property
    def damaged(self) -> bool:
        return self.stream_damage is not None or self.bad_lines > 0 or self.unclosed or (
            self.finished and self.end_events is not None and self.end_events != self.events)

    def damage(self) -> str | None:
        """One line for the user: what was wrong, where, and how much was read; None when nothing was."""
        if not self.damaged:
            return None
        parts = []
        if self.stream_damage:
            parts.append(f"{self.stream_damage}; nothing after it can be read")
        if self.unclosed:
            parts.append("it ends without its end mark (its writer was stopped before closing it: killed?)")
        elif self.end_events is not None and self.end_events != self.events and not self.bad_lines:
            parts.append(f"its end mark counts {self.end_events} events")
        if self.bad_lines:
            parts.append(f"{self.bad_lines} bad line{'s' if self.bad_lines > 1 else ''} skipped "
                         f"(first: {self.first_bad})")
        return (f"{self.path}: damaged recording: {'; '.join(parts)}; read {self.events} events "
                f"from {self.lines} lines")


def read_header(path: str | os.PathLike) -> dict:
    reader = RecordingReader(path)
    reader.close()
    return reader.header


def read_recording(path: str | os.PathLike) -> RecordingReader:
    """The events of a recording (iterate the reader); `.damage()` afterwards says what could not be read."""
    return RecordingReader(path)
