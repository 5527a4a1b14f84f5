import gzip
import json

import pytest

from otel_kafka_ebpf.capture.recording import RecordingError, RecordingWriter, read_header, read_recording
from otel_kafka_ebpf.capture.streams import (
    ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)

EVENTS = [
    ConnectionOpened(1, 10, 100, 101, "java", 5, 6, "127.0.0.1", 40000, "127.0.0.1", 9092, Role.CLIENT),
    StreamData(1, Direction.SEND, 11, 0, bytes(range(256)), frame_start=True),
    StreamGap(1, Direction.RECV, 12, 0, 77, GapReason.BUDGET),
    StreamData(1, Direction.RECV, 13, 77, b"\x00\x01", last_ts_ns=15),
    StreamGap(1, Direction.RECV, 15, 79, 1000, GapReason.RECORDS_SKIPPED),
    StreamGap(1, Direction.SEND, 16, 256, 40, GapReason.SASL),
    ConnectionClosed(1, 17),
]


def test_roundtrip(tmp_path):
    path = tmp_path / "r.okr"
    with RecordingWriter(path, source="test") as w:
        w.write_all(EVENTS)
    assert read_header(path)["source"] == "test"
    assert list(read_recording(path)) == EVENTS


def test_torn_tail_keeps_what_was_written(tmp_path):
    path = tmp_path / "r.okr"
    with RecordingWriter(path) as w:
        w.write_all(EVENTS)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))  # last line cut mid-way
    assert list(read_recording(path)) == EVENTS[:-1]


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


def test_not_a_recording(tmp_path):
    path = tmp_path / "x"
    path.write_text("hello")
    with pytest.raises(RecordingError, match="not a recording file"):
        read_header(path)
