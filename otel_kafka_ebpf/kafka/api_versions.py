"""ApiVersions (api key 18), versions 0-4: the client's software name/version and the broker's ranges."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    check_end, read_array_len, read_compact_array_len, read_compact_string, skip_tagged_fields,
)

VERSIONS = (0, 4)
FLEXIBLE = 3
UNSUPPORTED_VERSION = 35

_h = struct.Struct(">h").unpack_from
_hhh = struct.Struct(">hhh").unpack_from
_i32 = struct.Struct(">i").unpack_from


class ApiVersionsRequest(NamedTuple):
    client_software_name: str | None
    client_software_version: str | None


class ApiVersionRange(NamedTuple):
    api_key: int
    min_version: int
    max_version: int


class ApiVersionsResponse(NamedTuple):
    error_code: int
    api_keys: list[ApiVersionRange]
    throttle_time_ms: int


def decode_request(buf, pos: int, version: int) -> ApiVersionsRequest:
    name = software_version = None
    if version >= FLEXIBLE:
        name, pos = read_compact_string(buf, pos)
        software_version, pos = read_compact_string(buf, pos)
        pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ApiVersionsRequest(name, software_version)


def decode_response(buf, pos: int, version: int) -> ApiVersionsResponse:
    """A broker that does not know the requested version answers in v0 with UNSUPPORTED_VERSION."""
    (error_code,) = _h(buf, pos)
    if error_code == UNSUPPORTED_VERSION and version > 0:
        version = 0
    flex = version >= FLEXIBLE
    pos += 2
    n, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    api_keys = []
    for _ in range(n):
        api_keys.append(ApiVersionRange(*_hhh(buf, pos)))
        pos += 6
        if flex:
            pos = skip_tagged_fields(buf, pos)
    throttle = 0
    if version >= 1:
        (throttle,) = _i32(buf, pos)
        pos += 4
    if flex:
        pos = skip_tagged_fields(buf, pos)  # supported and finalized features
    check_end(buf, pos)
    return ApiVersionsResponse(error_code, api_keys, throttle)
