"""Request header v1/v2 and response header v0/v1."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import DecodeError, skip_tagged_fields
from .versions import is_flexible

_REQUEST_FIXED = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length
_request_fixed = _REQUEST_FIXED.unpack_from
_i32 = struct.Struct(">i").unpack_from

_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)

_client_ids: dict[bytes, str] = {}  # a connection repeats one client id: decode it once


class RequestHeader(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def read_request_header(frame, pos: int = 0) -> tuple[RequestHeader, int]:
    """Header of a request frame (without its size prefix); returns (header, body position).

    The client id is an int16-length string in both v1 and v2 (v2 only adds tagged fields).
    """
    try:
        api_key, api_version, correlation_id, n = _request_fixed(frame, pos)
    except struct.error:
        raise DecodeError("request header past end of frame") from None
    pos += 10
    if n < 0:
        if n != -1:
            raise DecodeError(f"client id length {n}")
        client_id = None
    else:
        end = pos + n
        if end > len(frame):
            raise DecodeError("client id past end of frame")
        raw = bytes(frame[pos:end])
        client_id = _client_ids.get(raw)
        if client_id is None:
            client_id = raw.decode("utf-8", "replace")
            if len(_client_ids) < 4096:
                _client_ids[raw] = client_id
        pos = end
    if is_flexible(api_key, api_version):
        try:
            pos = skip_tagged_fields(frame, pos)
        except IndexError:
            raise DecodeError("request header tagged fields past end of frame") from None
    return _new(RequestHeader, (api_key, api_version, correlation_id, client_id)), pos


def read_response_correlation_id(frame) -> int:
    """The first field of every response header version."""
    try:
        return _i32(frame, 0)[0]
    except struct.error:
        raise DecodeError("response header past end of frame") from None


def response_body_position(frame, header_version: int) -> int:
    if header_version == 0:
        return 4
    try:
        return skip_tagged_fields(frame, 4)
    except IndexError:
        raise DecodeError("response header tagged fields past end of frame") from None
