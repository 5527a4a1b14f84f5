"""The few request frames the agent sends itself (its own Metadata lookup): bytes out, no I/O."""

from __future__ import annotations

import struct

from .versions import API_VERSIONS, LIST_OFFSETS, METADATA, request_header_version

METADATA_VERSIONS = (4, 13)  # the versions `metadata_request` writes (v2+ name the cluster, v10+ topic ids)

_hhi = struct.Struct(">hhi")


def _frame(api_key: int, version: int, correlation_id: int, client_id: str, body: bytes) -> bytes:
    cid = client_id.encode()
    header = _hhi.pack(api_key, version, correlation_id) + struct.pack(">h", len(cid)) + cid
    if request_header_version(api_key, version) >= 2:
        header += b"\x00"  # no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def api_versions_request(correlation_id: int, client_id: str) -> bytes:
    """ApiVersions v0: every broker answers it, with the version ranges of all its APIs."""
    return _frame(API_VERSIONS, 0, correlation_id, client_id, b"")


def metadata_request(version: int, correlation_id: int, client_id: str) -> bytes:
    """Metadata for all topics (a null topic list), without creating any."""
    lo, hi = METADATA_VERSIONS
    if not lo <= version <= hi:
        raise ValueError(f"Metadata v{version} is not written (v{lo}-v{hi})")
    flex = version >= 9
    body = b"\x00" if flex else struct.pack(">i", -1)  # topics: null
    body += b"\x00"  # allow_auto_topic_creation: false
    if 8 <= version <= 10:
        body += b"\x00\x00"  # include cluster / topic authorized operations
    elif version >= 11:
        body += b"\x00"  # include topic authorized operations
    if flex:
        body += b"\x00"  # no tagged fields
    return _frame(METADATA, version, correlation_id, client_id, body)


LIST_OFFSETS_VERSION = 5  # read by every broker since Kafka 2.2 and still by 4.x
LATEST = -1  # ListOffsets timestamp: the high watermark (read_uncommitted)


def list_offsets_request(correlation_id: int, client_id: str, topics: dict[str, list[int]]) -> bytes:
    """ListOffsets v5 for the latest offset (the high watermark) of each partition, as a consumer asks it."""
    body = struct.pack(">ib", -1, 0)  # replica_id: a consumer; isolation_level: read_uncommitted
    body += struct.pack(">i", len(topics))
    for name, partitions in topics.items():
        raw = name.encode()
        body += struct.pack(">h", len(raw)) + raw + struct.pack(">i", len(partitions))
        for p in partitions:
            body += struct.pack(">iiq", p, -1, LATEST)  # partition, current leader epoch (unknown), timestamp
    return _frame(LIST_OFFSETS, LIST_OFFSETS_VERSION, correlation_id, client_id, body)
