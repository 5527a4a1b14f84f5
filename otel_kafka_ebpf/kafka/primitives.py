"""Kafka wire primitives read from a bytes-like buffer at a position.

Every reader has the shape ``read_x(buf, pos) -> (value, new_pos)``. `buf` is a ``memoryview`` or
``bytes``; nothing is copied except the decoded value itself (strings). A read past the end raises
`DecodeError` (directly, or as ``struct.error`` / ``IndexError`` that the message layer converts),
so callers check once per message instead of after every field.
"""

from __future__ import annotations

import base64
import struct

__all__ = [
    "DecodeError", "INT8", "INT16", "INT32", "INT64", "UINT32", "read_string", "read_compact_string",
    "read_uvarint", "read_varint", "read_varlong", "skip_tagged_fields", "read_uuid", "uuid_text",
    "read_int32_array", "read_compact_int32_array", "read_bytes_view", "read_compact_bytes_view",
    "read_array_len", "read_compact_array_len", "check_end", "read_tagged_fields", "flex_readers", "skip_tags",
]


class DecodeError(Exception):
    """The one declared error of the decoder: bytes that are not the message they claim to be."""


INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
INT64 = struct.Struct(">q")
UINT32 = struct.Struct(">I")
_i16 = INT16.unpack_from
_i32 = INT32.unpack_from

# Strings longer than this are not names a client sends; reject them early to fail fast on garbage.
MAX_STRING = 1 << 16


def read_uvarint(buf, pos: int) -> tuple[int, int]:
    """Unsigned LEB128 varint of at most 5 bytes (32-bit), as used by compact lengths and tags."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise DecodeError("unsigned varint longer than 5 bytes")


def read_varint(buf, pos: int) -> tuple[int, int]:
    """Zig-zag signed varint (32-bit), as used inside records."""
    value, pos = read_uvarint(buf, pos)
    return (value >> 1) ^ -(value & 1), pos


def read_varlong(buf, pos: int) -> tuple[int, int]:
    """Zig-zag signed varlong (64-bit, up to 10 bytes), as used for record timestamp deltas."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError("varlong longer than 10 bytes")


def read_string(buf, pos: int) -> tuple[str | None, int]:
    """int16-length string; -1 is null."""
    (n,) = _i16(buf, pos)
    pos += 2
    if n < 0:
        if n != -1:
            raise DecodeError(f"negative string length {n}")
        return None, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("string past end of message")
    return bytes(buf[pos:end]).decode("utf-8"), end


def read_compact_string(buf, pos: int) -> tuple[str | None, int]:
    """uvarint(length + 1) string; 0 is null."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = pos + n - 1
    if end > len(buf) or n > MAX_STRING:
        raise DecodeError("compact string past end of message")
    return bytes(buf[pos:end]).decode("utf-8"), end


def read_bytes_view(buf, pos: int) -> tuple[memoryview | None, int]:
    """int32-length bytes as a view into `buf` (no copy); -1 is null."""
    (n,) = _i32(buf, pos)
    pos += 4
    if n < 0:
        if n != -1:
            raise DecodeError(f"negative bytes length {n}")
        return None, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("bytes past end of message")
    return memoryview(buf)[pos:end], end


def read_compact_bytes_view(buf, pos: int) -> tuple[memoryview | None, int]:
    """uvarint(length + 1) bytes as a view into `buf` (no copy); 0 is null."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = pos + n - 1
    if end > len(buf):
        raise DecodeError("compact bytes past end of message")
    return memoryview(buf)[pos:end], end


def read_array_len(buf, pos: int) -> tuple[int, int]:
    """int32 array length; -1 (null) is returned as -1. Lengths that cannot fit are rejected."""
    (n,) = _i32(buf, pos)
    if n < -1 or n > len(buf) - pos:
        raise DecodeError(f"array length {n} out of range")
    return n, pos + 4


def read_compact_array_len(buf, pos: int) -> tuple[int, int]:
    """uvarint(length + 1) array length; null is returned as -1."""
    n = buf[pos]
    if n < 0x80:  # the common one-byte case, inline
        pos += 1
    else:
        n, pos = read_uvarint(buf, pos)
    n -= 1
    if n > len(buf) - pos:
        raise DecodeError(f"compact array length {n} out of range")
    return n, pos


def skip_tagged_fields(buf, pos: int) -> int:
    """Skip a tagged-field section (count, then tag/size/data triples)."""
    b = buf[pos]
    if b == 0:
        return pos + 1
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
    if pos > len(buf):
        raise DecodeError("tagged field past end of message")
    return pos


def skip_tags(buf, pos: int, flex: bool) -> int:
    """The tagged fields that end a structure in flexible versions; older versions have none."""
    return skip_tagged_fields(buf, pos) if flex else pos


def flex_readers(flex: bool):
    """(string, array length, bytes view, int32 array) readers of a flexible or an older version."""
    if flex:
        return read_compact_string, read_compact_array_len, read_compact_bytes_view, read_compact_int32_array
    return read_string, read_array_len, read_bytes_view, read_int32_array


def read_tagged_fields(buf, pos: int) -> tuple[dict[int, memoryview], int]:
    """Tagged-field section as {tag: view of its bytes}, for the few messages that use one."""
    count, pos = read_uvarint(buf, pos)
    fields = {}
    for _ in range(count):
        tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        end = pos + size
        if end > len(buf):
            raise DecodeError("tagged field past end of message")
        fields[tag] = memoryview(buf)[pos:end]
        pos = end
    return fields, pos


def read_uuid(buf, pos: int) -> tuple[bytes, int]:
    """16 raw bytes; topic ids are kept as bytes (hashable, cheap) and formatted only for display."""
    end = pos + 16
    if end > len(buf):
        raise DecodeError("uuid past end of message")
    return bytes(buf[pos:end]), end


def uuid_text(raw: bytes) -> str:
    """Kafka's own text form of a Uuid: URL-safe base64 without padding (as kafka-topics prints)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_int32_array(buf, pos: int) -> tuple[list[int], int]:
    n, pos = read_array_len(buf, pos)
    if n <= 0:
        return [], pos
    end = pos + 4 * n
    if end > len(buf):
        raise DecodeError("int32 array past end of message")
    return list(struct.unpack_from(f">{n}i", buf, pos)), end


def read_compact_int32_array(buf, pos: int) -> tuple[list[int] | None, int]:
    n, pos = read_compact_array_len(buf, pos)
    if n < 0:
        return None, pos
    end = pos + 4 * n
    if end > len(buf):
        raise DecodeError("int32 array past end of message")
    return list(struct.unpack_from(f">{n}i", buf, pos)), end


def check_end(buf, pos: int) -> None:
    """A message must fill its frame exactly: the strongest cheap check that the version was right."""
    if pos != len(buf):
        raise DecodeError(f"message ends at {pos}, frame at {len(buf)}")


def read_topic(buf, pos: int, ids: bool, flex: bool) -> tuple[str | None, bytes | None, int]:
    """A topic reference: its id in versions that carry topic ids, else its name."""
    if ids:
        topic_id, pos = read_uuid(buf, pos)
        return None, topic_id, pos
    topic, pos = read_compact_string(buf, pos) if flex else read_string(buf, pos)
    return topic, None, pos
