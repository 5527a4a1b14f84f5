"""Record batch v2 (magic 2): the 61-byte header on the hot path, records only when asked.

Batch headers are never compressed, so offsets, counts and timestamps come from the header alone
and the records stay an untouched view into the frame. `RecordBatch.records()` decompresses and
decodes the records on demand.

A digest capture copies each batch's header and skips its records (`RecordBatch.skipped` says how
many bytes): `Holes` reads the records fields of such a frame, and the records themselves are then
"not captured" (`RecordsNotCaptured`), except the first ones of an uncompressed batch when a record
prefix was asked for (`RecordBatch.first_records()`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import cramjam

from .primitives import DecodeError, read_uvarint, read_varint, read_varlong

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


class RecordsNotCaptured(DecodeError):
    """The batch's records were left in the kernel (digest capture): only its header is known."""


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
    data: memoryview  # the batch bytes captured: all of them, or (digest) the header and any record prefix
    skipped: int = 0  # record bytes the capture skipped (digest); 0 when `data` holds the whole batch

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
        """Decompress and decode the records (not on the hot path). Raises DecodeError, and its
        RecordsNotCaptured when a digest capture skipped them."""
        if self.skipped:
            raise RecordsNotCaptured(f"records of batch {self.base_offset} were not captured (digest)")
        if self.partial:
            raise DecodeError("records of a partial batch are not decodable")
        return decode_records(self)

    def first_records(self) -> list[Record]:
        """The records captured whole, from the first: all of them for a whole batch; for a digest
        with a record prefix (uncompressed batches only), those inside the prefix, with their headers
        (`traceparent`). Raises RecordsNotCaptured when there are none."""
        if not self.skipped and not self.partial:
            return decode_records(self)
        if self.attributes & 7 or len(self.data) <= BATCH_HEADER_SIZE:
            raise RecordsNotCaptured(f"records of batch {self.base_offset} were not captured")
        records = decode_record_prefix(self)
        if not records:
            raise RecordsNotCaptured(f"no whole record of batch {self.base_offset} was captured")
        return records


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
            batches.append(_tuple_new(RecordBatch, fields + (True, view[pos:size], 0)))
            break
        batches.append(_tuple_new(RecordBatch, fields + (False, view[pos:end], 0)))
        pos = end
    return _tuple_new(RecordSet, (batches, size, legacy))


_i32 = struct.Struct(">i").unpack_from


class Holes:
    """The skipped ranges of a digest frame, (position in the captured bytes, length), in order.

    Each lies inside one record batch, after its header; the records fields of the frame are read
    with `read_records` (instead of a bytes field and `read_batches`), which takes each range where
    it belongs. `done()` checks that every range was taken: one anywhere else means the frame is not
    what its digest claims.
    """

    __slots__ = ("skips", "k")

    def __init__(self, skips: tuple) -> None:
        self.skips = skips
        self.k = 0

    def read_records(self, buf, pos: int, flex: bool) -> tuple[list[RecordBatch], int, int]:
        """A records field at `pos`: (batches, its size on the wire, the position after it)."""
        if flex:
            n, pos = read_uvarint(buf, pos)
            n -= 1
        else:
            (n,) = _i32(buf, pos)
            pos += 4
            if n < -1:
                raise DecodeError(f"negative bytes length {n}")
        if n <= 0:
            return [], max(n, 0), pos
        skips = self.skips
        k = self.k
        n_skips = len(skips)
        batches = []
        left = n  # wire bytes of the field not yet read
        end_of_buf = len(buf)
        while left >= _LOG_OVERHEAD:
            if end_of_buf - pos < _LOG_OVERHEAD:
                raise DecodeError("record batch past end of frame")
            base_offset, batch_length = _i64_i32(buf, pos)
            span = min(_LOG_OVERHEAD + max(batch_length, 0), left)  # this batch's bytes in the field
            skipped = 0
            if k < n_skips and skips[k][0] <= pos + span - skips[k][1]:
                skipped = skips[k][1]
                if skips[k][0] < pos + BATCH_HEADER_SIZE:
                    raise DecodeError("skipped range inside a record batch header")
                k += 1
            end = pos + span - skipped
            if end > end_of_buf:
                raise DecodeError("record batch past end of frame")
            if left < BATCH_HEADER_SIZE:
                pos += left  # not even a full header left: a fetch cut it (copied as it is)
                left = 0
                break
            magic = buf[pos + _MAGIC_OFFSET]
            if magic != 2:
                if magic > 2 or batch_length < 0:
                    raise DecodeError(f"record batch magic {magic}")
                pos = end  # old message format: skipped by length
                left -= span
                continue
            if batch_length < BATCH_HEADER_SIZE - _LOG_OVERHEAD:
                raise DecodeError(f"record batch length {batch_length} shorter than its header")
            fields = _unpack_header(buf, pos)
            partial = _LOG_OVERHEAD + batch_length > left
            batches.append(_tuple_new(RecordBatch, fields + (partial, memoryview(buf)[pos:end], skipped)))
            pos = end
            left -= span
        self.k = k
        return batches, n, pos + left

    def done(self) -> None:
        if self.k != len(self.skips):
            raise DecodeError("a skipped range outside the record batches of the frame")


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
    try:
        for _ in range(batch.record_count):
            record, pos = _read_record(payload, pos, batch.base_offset, batch.first_timestamp)
            records.append(record)
    except IndexError:
        raise DecodeError("record past end of batch") from None
    if pos != len(payload):
        raise DecodeError("bytes after the last record of a batch")
    return records


def decode_record_prefix(batch: RecordBatch) -> list[Record]:
    """The whole records at the start of an uncompressed batch of which only a prefix was captured."""
    payload = bytes(batch.data[BATCH_HEADER_SIZE:])
    records = []
    pos = 0
    for _ in range(batch.record_count):
        try:
            record, pos = _read_record(payload, pos, batch.base_offset, batch.first_timestamp)
        except (DecodeError, IndexError):
            break  # the prefix ends inside this record
        records.append(record)
    return records


def _read_record(payload: bytes, pos: int, base_offset: int, base_ts: int) -> tuple[Record, int]:
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
    return Record(base_offset + off_delta, base_ts + ts_delta, off_delta, ts_delta, key, value, tuple(headers)), pos


def _record_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(buf, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("record field past end of batch")
    return buf[pos:end], end
