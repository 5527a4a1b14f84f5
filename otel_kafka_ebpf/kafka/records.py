"""Record batch v2 (magic 2): the 61-byte header on the hot path, records only when asked.

Batch headers are never compressed, so offsets, counts and timestamps come from the header alone
and the records stay an untouched view into the frame. `RecordBatch.records()` decompresses and
decodes the records on demand.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import cramjam

from .primitives import DecodeError, read_varint, read_varlong

# The v2 batch header, big-endian, 61 bytes.
BATCH_HEADER = struct.Struct(
    ">q"  # base_offset
    "i"  # batch_length: bytes after this field
    "i"  # partition_leader_epoch
    "b"  # magic (2)
    "I"  # crc (CRC-32C of attributes..end)
    "h"  # attributes: compression 0-2, timestamp type 3, transactional 4, control 5
    "i"  # last_offset_delta
    "q"  # base_timestamp (first record's timestamp)
    "q"  # max_timestamp
    "q"  # producer_id
    "h"  # producer_epoch
    "i"  # base_sequence
    "i"  # record count
)
BATCH_HEADER_SIZE = BATCH_HEADER.size  # 61
_unpack_header = BATCH_HEADER.unpack_from
_LOG_OVERHEAD = 12  # base_offset + batch_length: the part of a batch not counted in batch_length
_MAGIC_OFFSET = 16
_i64_i32 = struct.Struct(">qi").unpack_from

COMPRESSION_NAMES = ("none", "gzip", "snappy", "lz4", "zstd")
TIMESTAMP_CREATE_TIME = 0
TIMESTAMP_LOG_APPEND_TIME = 1


class Header(NamedTuple):
    key: str
    value: bytes | None


class Record(NamedTuple):
    offset: int  # absolute: base_offset + offset_delta
    timestamp: int  # absolute, ms: base_timestamp + timestamp_delta
    offset_delta: int
    timestamp_delta: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    @property
    def key_length(self) -> int:
        return -1 if self.key is None else len(self.key)

    @property
    def value_length(self) -> int:
        return -1 if self.value is None else len(self.value)


class RecordBatch(NamedTuple):
    """One batch: the header fields, plus `data`, a view of the batch bytes present in the frame."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int  # base_timestamp in the protocol
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    partial: bool  # the batch is cut short (a fetch response's last batch may be)
    data: memoryview

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> str:
        return COMPRESSION_NAMES[self.attributes & 7] if self.attributes & 7 < 5 else "unknown"

    @property
    def timestamp_type(self) -> int:
        return (self.attributes >> 3) & 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & 0x10)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & 0x20)

    def records(self) -> list[Record]:
        """Decompress and decode the records (not on the hot path). Raises DecodeError."""
        if self.partial:
            raise DecodeError("records of a partial batch are not decodable")
        return decode_records(self)


class RecordSet(NamedTuple):
    """The batches of one partition's `records` field."""

    batches: list[RecordBatch]
    size: int  # bytes of the records field
    legacy_bytes: int  # bytes in message-format v0/v1 (magic < 2), skipped


EMPTY_RECORD_SET = RecordSet([], 0, 0)
_tuple_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)


def read_batches(view: memoryview | None) -> RecordSet:
    """Split a records field into batch headers without touching the records.

    A trailing batch that is cut short (fetch responses stop at max_bytes mid-batch) is returned
    with ``partial=True`` when its 61-byte header is complete, and ignored otherwise.
    """
    if view is None:
        return EMPTY_RECORD_SET
    size = len(view)
    batches = []
    pos = 0
    legacy = 0
    while size - pos >= _LOG_OVERHEAD:
        base_offset, batch_length = _i64_i32(view, pos)
        end = pos + _LOG_OVERHEAD + batch_length
        if size - pos < BATCH_HEADER_SIZE:
            break  # not even a full header left: a fetch cut it
        magic = view[pos + _MAGIC_OFFSET]
        if magic != 2:
            if magic > 2 or batch_length < 0:
                raise DecodeError(f"record batch magic {magic}")
            legacy += min(end, size) - pos  # old message format: skipped by length
            pos = end
            continue
        if batch_length < BATCH_HEADER_SIZE - _LOG_OVERHEAD:
            raise DecodeError(f"record batch length {batch_length} shorter than its header")
        fields = _unpack_header(view, pos)
        if end > size:
            batches.append(_tuple_new(RecordBatch, fields + (True, view[pos:size])))
            break
        batches.append(_tuple_new(RecordBatch, fields + (False, view[pos:end])))
        pos = end
    return _tuple_new(RecordSet, (batches, size, legacy))


# --- records, only when asked ------------------------------------------------------------------

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_u32 = struct.Struct(">I").unpack_from


def _snappy(data: bytes) -> bytes:
    # The Java client frames snappy the xerial way (magic, 2 versions, then length-prefixed raw
    # blocks); librdkafka may write one raw block. Both are accepted.
    if data[:8] == _XERIAL_MAGIC:
        out = []
        pos = 16
        while pos + 4 <= len(data):
            (n,) = _u32(data, pos)
            pos += 4
            out.append(bytes(cramjam.snappy.decompress_raw(data[pos:pos + n])))
            pos += n
        return b"".join(out)
    return bytes(cramjam.snappy.decompress_raw(data))


def decompress(codec: int, data: bytes) -> bytes:
    try:
        if codec == 0:
            return data
        if codec == 1:
            return bytes(cramjam.gzip.decompress(data))
        if codec == 2:
            return _snappy(data)
        if codec == 3:
            return bytes(cramjam.lz4.decompress(data))
        if codec == 4:
            return bytes(cramjam.zstd.decompress(data))
    except DecodeError:
        raise
    except Exception as exc:  # cramjam raises its own error types per codec
        raise DecodeError(f"{COMPRESSION_NAMES[codec]} decompression failed: {exc}") from None
    raise DecodeError(f"unknown compression codec {codec}")


def decode_records(batch: RecordBatch) -> list[Record]:
    body = bytes(batch.data[BATCH_HEADER_SIZE:])
    payload = decompress(batch.attributes & 7, body)
    records = []
    pos = 0
    base_offset = batch.base_offset
    base_ts = batch.first_timestamp
    try:
        for _ in range(batch.record_count):
            length, pos = read_varint(payload, pos)
            end = pos + length
            if length < 0 or end > len(payload):
                raise DecodeError("record length past end of batch")
            pos += 1  # attributes (unused)
            ts_delta, pos = read_varlong(payload, pos)
            off_delta, pos = read_varint(payload, pos)
            key, pos = _record_bytes(payload, pos)
            value, pos = _record_bytes(payload, pos)
            n_headers, pos = read_varint(payload, pos)
            if n_headers < 0:
                raise DecodeError("negative header count")
            headers = []
            for _ in range(n_headers):
                hkey, pos = _record_bytes(payload, pos)
                hvalue, pos = _record_bytes(payload, pos)
                if hkey is None:
                    raise DecodeError("null header key")
                headers.append(Header(hkey.decode("utf-8", "replace"), hvalue))
            if pos != end:
                raise DecodeError("record length does not match its fields")
            records.append(Record(base_offset + off_delta, base_ts + ts_delta, off_delta, ts_delta,
                                  key, value, tuple(headers)))
    except IndexError:
        raise DecodeError("record past end of batch") from None
    if pos != len(payload):
        raise DecodeError("bytes after the last record of a batch")
    return records


def _record_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(buf, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("record field past end of batch")
    return buf[pos:end], end
