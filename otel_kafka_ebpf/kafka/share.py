"""Share groups (KIP-932): ShareFetch (78) and ShareAcknowledge (79), versions 0-2 (all flexible).

Version 0 was the 4.0 early-access layout (brokers of 4.1+ accept 1-2); its fields are known,
so it is decoded too.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    check_end, read_compact_array_len, read_compact_bytes_view, read_compact_int32_array,
    read_compact_string, read_uuid, skip_tagged_fields,
)
from .records import Holes, RecordBatch, read_batches

SHARE_FETCH_VERSIONS = (0, 2)
SHARE_ACKNOWLEDGE_VERSIONS = (0, 2)

_i32 = struct.Struct(">i").unpack_from
_iiii = struct.Struct(">iiii").unpack_from
_ii = struct.Struct(">ii").unpack_from
_qq = struct.Struct(">qq").unpack_from
_qqh = struct.Struct(">qqh").unpack_from
_ih = struct.Struct(">ih").unpack_from


class AcknowledgementBatch(NamedTuple):
    first_offset: int
    last_offset: int
    acknowledge_types: list[int]  # 0 gap, 1 accept, 2 release, 3 reject, 4 renew


class SharePartitionRequest(NamedTuple):
    topic_id: bytes
    partition: int
    acknowledgements: list[AcknowledgementBatch]


class ShareFetchRequest(NamedTuple):
    group_id: str | None
    member_id: str | None
    share_session_epoch: int
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    max_records: int
    batch_size: int
    partitions: list[SharePartitionRequest]
    forgotten: list[tuple[bytes, list[int]]]


class AcquiredRecords(NamedTuple):
    first_offset: int
    last_offset: int
    delivery_count: int


class ShareFetchPartition(NamedTuple):
    topic_id: bytes
    partition: int
    error_code: int
    acknowledge_error_code: int
    leader_id: int
    leader_epoch: int
    batches: list[RecordBatch]
    acquired: list[AcquiredRecords]


class ShareFetchResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    error_message: str | None
    acquisition_lock_timeout_ms: int
    partitions: list[ShareFetchPartition]


class ShareAcknowledgeRequest(NamedTuple):
    group_id: str | None
    member_id: str | None
    share_session_epoch: int
    partitions: list[SharePartitionRequest]


class ShareAcknowledgePartition(NamedTuple):
    topic_id: bytes
    partition: int
    error_code: int
    leader_id: int
    leader_epoch: int


class ShareAcknowledgeResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    error_message: str | None
    acquisition_lock_timeout_ms: int
    partitions: list[ShareAcknowledgePartition]


def _ack_batches(buf, pos: int) -> tuple[list[AcknowledgementBatch], int]:
    out = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        first, last = _qq(buf, pos)
        m, pos = read_compact_array_len(buf, pos + 16)
        types = list(bytes(buf[pos:pos + m])) if m > 0 else []
        pos = skip_tagged_fields(buf, pos + max(m, 0))
        out.append(AcknowledgementBatch(first, last, types))
    return out, pos


def _response_head(buf, pos: int, has_lock_timeout: bool) -> tuple[int, int, str | None, int, int]:
    """throttle_time_ms, error_code, error_message and (from a version on) acquisition_lock_timeout_ms."""
    throttle, error = _ih(buf, pos)
    message, pos = read_compact_string(buf, pos + 6)
    lock_timeout = -1
    if has_lock_timeout:
        (lock_timeout,) = _i32(buf, pos)
        pos += 4
    return throttle, error, message, lock_timeout, pos


def _current_leader(buf, pos: int) -> tuple[int, int, int]:
    """A partition's current-leader struct: leader id, leader epoch, and the position after it."""
    leader_id, leader_epoch = _ii(buf, pos)
    return leader_id, leader_epoch, skip_tagged_fields(buf, pos + 8)


def _skip_node_endpoints(buf, pos: int) -> int:
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        _host, pos = read_compact_string(buf, pos + 4)
        _rack, pos = read_compact_string(buf, pos + 4)
        pos = skip_tagged_fields(buf, pos)
    return pos


def decode_share_fetch_request(buf, pos: int, version: int) -> ShareFetchRequest:
    group_id, pos = read_compact_string(buf, pos)
    member_id, pos = read_compact_string(buf, pos)
    epoch, max_wait, min_bytes, max_bytes = _iiii(buf, pos)
    pos += 16
    max_records = batch_size = -1
    if version >= 1:
        max_records, batch_size = _ii(buf, pos)
        pos += 8
    if version >= 2:
        pos += 2  # share_acquire_mode, is_renew_ack
    partitions = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        m, pos = read_compact_array_len(buf, pos)
        for _ in range(m):
            (index,) = _i32(buf, pos)
            pos += 4
            if version == 0:
                pos += 4  # partition_max_bytes
            acks, pos = _ack_batches(buf, pos)
            pos = skip_tagged_fields(buf, pos)
            partitions.append(SharePartitionRequest(topic_id, index, acks))
        pos = skip_tagged_fields(buf, pos)
    forgotten = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        parts, pos = read_compact_int32_array(buf, pos)
        pos = skip_tagged_fields(buf, pos)
        forgotten.append((topic_id, parts or []))
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ShareFetchRequest(group_id, member_id, epoch, max_wait, min_bytes, max_bytes, max_records, batch_size,
                             partitions, forgotten)


def decode_share_fetch_response(buf, pos: int, version: int, holes: Holes | None = None) -> ShareFetchResponse:
    throttle, error, message, lock_timeout, pos = _response_head(buf, pos, version >= 1)
    partitions = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        m, pos = read_compact_array_len(buf, pos)
        for _ in range(m):
            index, p_error = _ih(buf, pos)
            _msg, pos = read_compact_string(buf, pos + 6)
            (ack_error,) = struct.unpack_from(">h", buf, pos)
            _msg, pos = read_compact_string(buf, pos + 2)
            leader_id, leader_epoch, pos = _current_leader(buf, pos)
            if holes is not None:  # a digest: batch headers without their records
                batches, _, pos = holes.read_records(buf, pos, True)
            else:
                records, pos = read_compact_bytes_view(buf, pos)
                batches = read_batches(records).batches
            acquired = []
            k, pos = read_compact_array_len(buf, pos)
            for _ in range(k):
                acquired.append(AcquiredRecords(*_qqh(buf, pos)))
                pos = skip_tagged_fields(buf, pos + 18)
            pos = skip_tagged_fields(buf, pos)
            partitions.append(ShareFetchPartition(topic_id, index, p_error, ack_error, leader_id, leader_epoch,
                                                  batches, acquired))
        pos = skip_tagged_fields(buf, pos)
    pos = _skip_node_endpoints(buf, pos)
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ShareFetchResponse(throttle, error, message, lock_timeout, partitions)


def decode_share_acknowledge_request(buf, pos: int, version: int) -> ShareAcknowledgeRequest:
    group_id, pos = read_compact_string(buf, pos)
    member_id, pos = read_compact_string(buf, pos)
    (epoch,) = _i32(buf, pos)
    pos += 4
    if version >= 2:
        pos += 1  # is_renew_ack
    partitions = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        m, pos = read_compact_array_len(buf, pos)
        for _ in range(m):
            (index,) = _i32(buf, pos)
            acks, pos = _ack_batches(buf, pos + 4)
            pos = skip_tagged_fields(buf, pos)
            partitions.append(SharePartitionRequest(topic_id, index, acks))
        pos = skip_tagged_fields(buf, pos)
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ShareAcknowledgeRequest(group_id, member_id, epoch, partitions)


def decode_share_acknowledge_response(buf, pos: int, version: int) -> ShareAcknowledgeResponse:
    throttle, error, message, lock_timeout, pos = _response_head(buf, pos, version >= 2)
    partitions = []
    n, pos = read_compact_array_len(buf, pos)
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        m, pos = read_compact_array_len(buf, pos)
        for _ in range(m):
            index, p_error = _ih(buf, pos)
            _msg, pos = read_compact_string(buf, pos + 6)
            leader_id, leader_epoch, pos = _current_leader(buf, pos)
            pos = skip_tagged_fields(buf, pos)
            partitions.append(ShareAcknowledgePartition(topic_id, index, p_error, leader_id, leader_epoch))
        pos = skip_tagged_fields(buf, pos)
    pos = _skip_node_endpoints(buf, pos)
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ShareAcknowledgeResponse(throttle, error, message, lock_timeout, partitions)
