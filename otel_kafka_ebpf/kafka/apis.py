"""The table of body decoders by api key, with the version range each one states."""

from __future__ import annotations

import struct

from . import api_versions, fetch, groups, metadata, offsets, produce, share
from .primitives import DecodeError
from .records import Holes
from .versions import (
    API_VERSIONS, CONSUMER_GROUP_HEARTBEAT, FETCH, FIND_COORDINATOR, HEARTBEAT, JOIN_GROUP, LEAVE_GROUP,
    LIST_OFFSETS, METADATA, OFFSET_COMMIT, OFFSET_FETCH, PRODUCE, SHARE_ACKNOWLEDGE, SHARE_FETCH, SYNC_GROUP,
)

# api_key: (min version, max version, decode_request, decode_response); each range is stated
# beside its decoder.
DECODERS = {
    PRODUCE: (*produce.VERSIONS, produce.decode_request, produce.decode_response),
    FETCH: (*fetch.VERSIONS, fetch.decode_request, fetch.decode_response),
    LIST_OFFSETS: (*offsets.LIST_OFFSETS_VERSIONS, offsets.decode_list_offsets_request,
                   offsets.decode_list_offsets_response),
    METADATA: (*metadata.VERSIONS, metadata.decode_request, metadata.decode_response),
    OFFSET_COMMIT: (*offsets.OFFSET_COMMIT_VERSIONS, offsets.decode_offset_commit_request,
                    offsets.decode_offset_commit_response),
    OFFSET_FETCH: (*offsets.OFFSET_FETCH_VERSIONS, offsets.decode_offset_fetch_request,
                   offsets.decode_offset_fetch_response),
    FIND_COORDINATOR: (*groups.FIND_COORDINATOR_VERSIONS, groups.decode_find_coordinator_request,
                       groups.decode_find_coordinator_response),
    JOIN_GROUP: (*groups.JOIN_GROUP_VERSIONS, groups.decode_join_group_request, groups.decode_join_group_response),
    HEARTBEAT: (*groups.HEARTBEAT_VERSIONS, groups.decode_heartbeat_request, groups.decode_heartbeat_response),
    LEAVE_GROUP: (*groups.LEAVE_GROUP_VERSIONS, groups.decode_leave_group_request,
                  groups.decode_leave_group_response),
    SYNC_GROUP: (*groups.SYNC_GROUP_VERSIONS, groups.decode_sync_group_request, groups.decode_sync_group_response),
    API_VERSIONS: (*api_versions.VERSIONS, api_versions.decode_request, api_versions.decode_response),
    CONSUMER_GROUP_HEARTBEAT: (*groups.CONSUMER_GROUP_HEARTBEAT_VERSIONS,
                               groups.decode_consumer_group_heartbeat_request,
                               groups.decode_consumer_group_heartbeat_response),
    SHARE_FETCH: (*share.SHARE_FETCH_VERSIONS, share.decode_share_fetch_request, share.decode_share_fetch_response),
    SHARE_ACKNOWLEDGE: (*share.SHARE_ACKNOWLEDGE_VERSIONS, share.decode_share_acknowledge_request,
                        share.decode_share_acknowledge_response),
}

SUPPORTED: dict[int, tuple[int, int]] = {key: (lo, hi) for key, (lo, hi, _, _) in DECODERS.items()}

# The bodies a digest capture may skip parts of (their records): (api key, is response)
DIGESTED = frozenset({(PRODUCE, False), (FETCH, True), (SHARE_FETCH, True)})
"""api_key -> (min, max) body version decoded; tested against a live broker's ApiVersions."""

# What malformed bytes can raise inside a body decoder; all of it surfaces as DecodeError.
_MALFORMED = (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError, MemoryError)


class UnsupportedApi(DecodeError):
    """An api key or version this decoder does not read; the frame is skipped by its length."""


def decode_request_body(api_key: int, version: int, frame, pos: int, skips: tuple = ()):
    """`skips`: the ranges a digest capture did not copy (Frame.skips); the frame holds the rest."""
    entry = DECODERS.get(api_key)
    if entry is None or not entry[0] <= version <= entry[1]:
        raise UnsupportedApi(f"api {api_key} v{version}")
    try:
        if skips:
            return _with_holes(entry[2], api_key, False, frame, pos, version, skips)
        return entry[2](frame, pos, version)
    except _MALFORMED as exc:
        raise DecodeError(f"api {api_key} v{version} request: {exc}") from None


def _with_holes(decode, api_key: int, is_response: bool, frame, pos: int, version: int, skips: tuple):
    if (api_key, is_response) not in DIGESTED:
        raise DecodeError(f"api {api_key} v{version}: skipped ranges in a body that has no digest")
    holes = Holes(skips)
    message = decode(frame, pos, version, holes)
    holes.done()
    return message


def decode_response_body(api_key: int, version: int, frame, pos: int, skips: tuple = ()):
    entry = DECODERS.get(api_key)
    if api_key == API_VERSIONS and entry is not None and version > entry[1]:
        version = entry[1]  # a probe above what the broker knows is answered in v0 (UNSUPPORTED_VERSION)
        if frame[pos:pos + 2] != b"\x00\x23":
            raise UnsupportedApi(f"api {api_key} v{version}")
    if entry is None or not entry[0] <= version <= entry[1]:
        raise UnsupportedApi(f"api {api_key} v{version}")
    try:
        if skips:
            return _with_holes(entry[3], api_key, True, frame, pos, version, skips)
        return entry[3](frame, pos, version)
    except _MALFORMED as exc:
        raise DecodeError(f"api {api_key} v{version} response: {exc}") from None
