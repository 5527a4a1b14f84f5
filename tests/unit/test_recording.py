"""Recordings: written privately and durably, read strictly; damage is said in one line, with where and how much
was read, and what could be read is still replayed (never anything wrong)."""

import gzip
import io
import json
import stat
import struct
import subprocess
import sys
import zlib

import pytest

from otel_kafka_ebpf.capture.recording import (
    _INFLATE, MAX_UNVERIFIED, RecordingError, RecordingWriter, _encode, _gzip_text, read_header, read_recording,
)
from otel_kafka_ebpf.capture.streams import (
    Annotation, ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)
from tests.unit.kafka import vectors

EVENTS = [
    ConnectionOpened(1, 10, 100, 101, "java", 5, 6, "127.0.0.1", 40000, "127.0.0.1", 9092, Role.CLIENT),
    StreamData(1, Direction.SEND, 11, 0, bytes(range(256)), frame_start=True),
    StreamGap(1, Direction.RECV, 12, 0, 77, GapReason.BUDGET),
    StreamData(1, Direction.RECV, 13, 77, b"\x00\x01", last_ts_ns=15),
    Annotation("process", 13, {"pid": 100, "service.name": "orders"}),
    StreamGap(1, Direction.RECV, 15, 79, 1000, GapReason.RECORDS_SKIPPED),
    StreamData(1, Direction.RECV, 16, 1079, b"\x00\x00\x00\x50" + bytes(20), last_ts_ns=17,
               skips=((24, 60),), skip_reason=GapReason.RECORDS_SKIPPED),
    StreamGap(1, Direction.SEND, 18, 256, 40, GapReason.SASL),
    ConnectionClosed(1, 19),
]


def _write(path, events, every=None):
    """A recording of `events`; with `every`, one gzip member per that many events (as a live writer makes them)."""
    with RecordingWriter(path, source="test") as w:
        for i, event in enumerate(events, 1):
            w.write(event)
            if every and i % every == 0:
                w.flush()
    return path


def _lines(path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).split(b"\n")[:-1]


def _rewrite(path, lines: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))


def _read(path):
    reader = read_recording(path)
    return list(reader), reader


def test_roundtrip(tmp_path):
    path = _write(tmp_path / "r.okr", EVENTS)
    assert read_header(path)["source"] == "test"
    events, reader = _read(path)
    assert events == EVENTS and reader.damage() is None


def test_recordings_are_private(tmp_path):
    """A recording holds message keys and values: only its owner may read it, even one written over a 0644 file."""
    new = _write(tmp_path / "new.okr", EVENTS)
    old = tmp_path / "old.okr"
    old.write_bytes(b"")
    old.chmod(0o644)
    _write(old, EVENTS)
    for path in (new, old):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)


def test_torn_tail_keeps_what_was_written(tmp_path):
    path = _write(tmp_path / "r.okr", EVENTS)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))  # last line cut mid-way
    events, reader = _read(path)
    assert events == EVENTS
    assert "1 bad line skipped (first: line 11: not JSON)" in reader.damage()


def test_version_1_recordings_are_still_read():
    """The recorded vectors are version 1 files (tests/unit/kafka/test_decoder_vectors.py decodes them)."""
    from tests.unit.kafka import vectors

    path = vectors.VECTORS / "go-plain.rec.gz"
    assert read_header(path)["version"] == 1
    events = list(read_recording(path))
    assert any(isinstance(e, StreamData) and e.last_ts_ns is None for e in events)


def test_written_recordings_are_version_2(tmp_path):
    path = tmp_path / "r.okr"
    with RecordingWriter(path) as w:
        w.write_all(EVENTS)
    assert read_header(path)["version"] == 2


def test_unknown_version_is_one_clear_error(tmp_path):
    path = tmp_path / "r.okr"
    path.write_bytes(gzip.compress(json.dumps({"format": "otel-kafka-ebpf-recording", "version": 99}).encode() + b"\n"))
    with pytest.raises(RecordingError, match="version 99 is not supported"):
        list(read_recording(path))


@pytest.mark.parametrize("content", [b"hello", b"", b"\x1f\x8b\x08\x00garbage", gzip.compress(b"[1, 2]\n"),
                                     gzip.compress(b'{"format": "otel-kafka-ebpf-recording", "version": true}\n')])
def test_not_a_recording(tmp_path, content):
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match="not a recording file|not supported"):
        read_header(path)


# --- strict types: a bad line is skipped and counted, and the lines after it are still read ---------------------

def _line(event, **change) -> bytes:
    obj = _encode(event)
    for key, value in change.items():
        if value is DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


DROP = object()
OPEN, DATA, GAP, CLOSE, NOTE = EVENTS[0], EVENTS[1], EVENTS[2], EVENTS[8], EVENTS[4]

BAD_LINES = {
    "offset a string": (_line(DATA, o="12"), "'o' is not an integer"),
    "offset negative": (_line(DATA, o=-1), "'o' is not an integer"),
    "offset a float": (_line(DATA, o=1.0), "'o' is not an integer"),
    "offset a boolean": (_line(DATA, o=True), "'o' is not an integer"),
    "offset beyond 64 bits": (_line(DATA, o=1 << 64), "'o' is not an integer"),
    "data past the stream's end": (_line(DATA, o=(1 << 64) - 2), "'o' plus the data's length is beyond"),
    "timestamp a string": (_line(DATA, ts="abc"), "'ts' is not an integer"),
    "no timestamp": (_line(CLOSE, ts=DROP), "no 'ts'"),
    "bad base64": (_line(DATA, b="!!!!"), "not valid base64"),
    "base64 with non-ASCII": (_line(DATA, b="\u0080AA="), "not valid base64"),
    "base64 a number": (_line(DATA, b=5), "'b' is not a string"),
    "unknown direction": (_line(DATA, d=2), "not a known Direction"),
    "frame start 2": (_line(DATA, fs=2), "'fs' is not 0 or 1"),
    "negative gap length": (_line(GAP, n=-5), "'n' is not an integer"),
    "unknown gap reason": (_line(GAP, r=99), "not a known GapReason"),
    "port beyond 65535": (_line(OPEN, rport=70000), "'rport' is not an integer"),
    "pid a string": (_line(OPEN, pid="100"), "'pid' is not an integer"),
    "comm a number": (_line(OPEN, comm=7), "'comm' is not a string"),
    "unknown role": (_line(OPEN, role=7), "not a known Role"),
    "note without a table": (_line(NOTE, v=[1]), "'v' is not a table"),
    "unknown event type": (_line(CLOSE, t="bogus"), "unknown event type 'bogus'"),
    "no event type": (b'{"c": 1}', "no event type"),
    "not an object": (b"[1, 2, 3]", "not a JSON object"),
    "not JSON": (b'{"t": "data", "c": 1,', "not JSON"),
    "NaN": (b'{"t": "close", "c": NaN, "ts": 1}', "not JSON"),
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    "invalid UTF-8": (b'{"t": "note", "k": "\xff\xfe", "ts": 1, "v": {}}', "not UTF-8"),
    "empty line": (b"", "not JSON"),
}


@pytest.mark.parametrize("bad, why", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_skipped_counted_and_said(tmp_path, bad, why):
    path = _write(tmp_path / "r.okr", EVENTS)
    lines = _lines(path)
    _rewrite(path, lines[:3] + [bad] + lines[3:])  # after the open and the first data event
    events, reader = _read(path)
    assert events == EVENTS  # everything else, nothing of the bad line
    damage = reader.damage()
    assert "1 bad line skipped (first: line 4: " in damage and why in damage, damage
    assert f"read {len(EVENTS)} events from {len(EVENTS) + 3} lines" in damage, damage


# --- the gzip stream: damage stops the reading at the member it is in; what came before is read --------------

def _members(path) -> list[tuple[int, int]]:
    """(start, end) of each gzip member of a file the writer made."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        out.append((pos, end))
        pos = end
    return out


@pytest.fixture
def recorded(tmp_path):
    """A real client's recorded traffic, written as a live `record` writes it: a gzip member every 20 events."""
    events = vectors.events("go-live-6p")
    return _write(tmp_path / "go.okr", events, every=20), list(events)


def test_a_flipped_byte_stops_at_its_member_and_keeps_what_came_before(recorded):
    path, events = recorded
    members = _members(path)
    start, end = members[3]  # the header has a member of its own: this one holds events 41-60
    raw = bytearray(path.read_bytes())
    raw[(start + end) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    got, reader = _read(path)
    assert got == events[:40]  # the damaged member's events are never handed on, even those that decode
    damage = reader.damage()
    assert "corrupt gzip data" in damage and f"in the member from compressed byte {start} of {len(raw)}" in damage, damage
    assert "read 40 events from 41 lines" in damage, damage


def test_a_crc_failure_is_named(recorded):
    path, events = recorded
    start, end = _members(path)[2]
    raw = bytearray(path.read_bytes())
    crc, size = struct.unpack_from("<II", raw, end - 8)
    struct.pack_into("<II", raw, end - 8, crc ^ 1, size)
    path.write_bytes(bytes(raw))
    got, reader = _read(path)
    assert got == events[:20]
    assert f"corrupt gzip data (CRC check failed) in the member from compressed byte {start}" in reader.damage()


@pytest.mark.parametrize("where", ["inside a member", "between members"])
def test_a_recording_cut_short_is_read_to_the_cut(recorded, where):
    path, events = recorded
    start, end = _members(path)[5]
    cut = (start + end) // 2 if where == "inside a member" else start
    path.write_bytes(path.read_bytes()[:cut])
    got, reader = _read(path)
    damage = reader.damage()
    if where == "between members":  # every member whole: only the missing end mark tells
        assert got == events[:80]
        assert "ends without its end mark" in damage, damage
    else:  # a prefix of deflate data decodes exactly: the cut member's whole lines are read too
        assert 80 <= len(got) < 100 and got == events[:len(got)]
        assert f"cut short inside the gzip member from compressed byte {start} of {cut}" in damage, damage


def test_bytes_after_the_last_member(recorded):
    path, events = recorded
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\x00" * 8)  # zero padding, as tape and some tools leave: fine
    got, reader = _read(path)
    assert got == events and reader.damage() is None
    path.write_bytes(path.read_bytes() + b"trailing junk")
    got, reader = _read(path)
    assert got == events and f"bytes that are not gzip data from compressed byte {size + 8}" in reader.damage()


def test_the_end_mark_counts_the_events(recorded):
    path, events = recorded
    lines = _lines(path)
    _rewrite(path, lines[:10] + lines[11:])  # a line removed, and nothing else wrong
    got, reader = _read(path)
    assert len(got) == len(events) - 1
    assert f"its end mark counts {len(events)} events; read {len(events) - 1} events" in reader.damage()
    _rewrite(path, lines + lines[1:3])
    got, reader = _read(path)
    assert got == events and "2 bad lines skipped (first: line" in reader.damage()
    assert "after the recording's end mark" in reader.damage()


@pytest.mark.parametrize("size", [_INFLATE - 1, _INFLATE, _INFLATE + 1, 3 * _INFLATE, MAX_UNVERIFIED + 7])
def test_members_of_any_size_inflate_whole(size):
    """Text is inflated at most _INFLATE bytes a call, and a member larger than MAX_UNVERIFIED handed on in parts:
    no size at those edges loses, repeats or hangs on a byte (one exactly _INFLATE long once looped forever)."""
    text = b"x" * (size - 1) + b"\n"
    assert b"".join(_gzip_text(io.BytesIO(gzip.compress(text) + gzip.compress(text)))) == text * 2


def test_recordings_of_the_older_writer_still_read():
    """The test vectors were written as one gzip member with no end mark: they read without a warning."""
    reader = read_recording(vectors.VECTORS / "go-live-6p.rec.gz")
    assert len(list(reader)) > 400 and reader.damage() is None


# --- through the CLI: the pairs that could be read are printed, then one warning line, exit 3 -----------------

def _replay(path):
    return subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", "replay", "--json", str(path)],
                          capture_output=True, text=True, timeout=120)


def _pairs(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _right_or_null(pair: dict, clean: list[dict]) -> bool:
    """The pair is one of the clean replay's, or that pair with its response unknown (cut off by the damage)."""
    if pair in clean:
        return True
    if pair.get("response_ns") is not None:
        return False
    same = ("api", "version", "client_id", "correlation_id", "request_ns")
    return any(all(pair[k] == c[k] for k in same) for c in clean)


@pytest.mark.parametrize("damage", ["flipped byte", "cut in half", "bad JSON line", "bad UTF-8", "string offset"])
def test_replay_of_a_damaged_recording(recorded, damage):
    path, events = recorded
    clean = _replay(path)
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr
    raw = path.read_bytes()
    start, end = _members(path)[len(_members(path)) // 2]
    lines = _lines(path)
    if damage == "flipped byte":
        path.write_bytes(raw[:(start + end) // 2] + bytes([raw[(start + end) // 2] ^ 0x10]) + raw[(start + end) // 2 + 1:])
    elif damage == "cut in half":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "bad JSON line":
        _rewrite(path, lines[:50] + [b'{"t": "data", "c": '] + lines[50:])
    elif damage == "bad UTF-8":
        _rewrite(path, lines[:50] + [lines[50][:20] + b"\xc3\x28" + lines[50][20:]] + lines[51:])
    else:
        obj = json.loads(lines[50])
        obj["o" if "o" in obj else "ts"] = "1234"
        _rewrite(path, lines[:50] + [json.dumps(obj).encode()] + lines[51:])
    r = _replay(path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    warning = r.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("otel-kafka-ebpf: warning: ") and "damaged recording" in \
        warning[0], r.stderr
    got, want = _pairs(r.stdout), _pairs(clean.stdout)
    assert got, "the pairs before the damage are printed"
    wrong = [p for p in got if not _right_or_null(p, want)]
    assert not wrong, wrong[:3]
    if damage in ("bad JSON line", "bad UTF-8"):  # one line lost: the rest still read
        assert "line 51" in warning[0], warning
        assert len(got) >= len(want) - 2
