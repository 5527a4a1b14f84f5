"""ListOffsets (2) v1-11, OffsetCommit (8) v2-10, OffsetFetch (9) v1-10.

OffsetCommit v10 and OffsetFetch v10 name topics by id (KIP-848 clients).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import check_end, flex_readers, read_topic, skip_tags

LIST_OFFSETS_VERSIONS = (1, 11)
OFFSET_COMMIT_VERSIONS = (2, 10)
OFFSET_FETCH_VERSIONS = (1, 10)

_i32 = struct.Struct(">i").unpack_from
_h = struct.Struct(">h").unpack_from
_ib = struct.Struct(">ib").unpack_from
_iq = struct.Struct(">iq").unpack_from
_iiq = struct.Struct(">iiq").unpack_from
_ih = struct.Struct(">ih").unpack_from
_ihqq = struct.Struct(">ihqq").unpack_from
_i_q_i = struct.Struct(">iqi").unpack_from
_q = struct.Struct(">q").unpack_from


class TopicPartitionOffset(NamedTuple):
    """One partition of an offsets request or response; fields an api/version lacks are -1/None."""

    topic: str | None
    topic_id: bytes | None
    partition: int
    offset: int  # ListOffsets: timestamp asked / offset found; OffsetCommit/Fetch: committed offset
    timestamp: int
    leader_epoch: int
    error_code: int
    metadata: str | None


class ListOffsetsRequest(NamedTuple):
    replica_id: int
    isolation_level: int
    partitions: list[TopicPartitionOffset]  # offset = -1; timestamp = the target (-1 latest, -2 earliest)


class ListOffsetsResponse(NamedTuple):
    throttle_time_ms: int
    partitions: list[TopicPartitionOffset]


def decode_list_offsets_request(buf, pos: int, version: int) -> ListOffsetsRequest:
    flex = version >= 6
    rd_str, rd_len, _, _ = flex_readers(flex)
    isolation = 0
    if version >= 2:
        replica_id, isolation = _ib(buf, pos)
        pos += 5
    else:
        (replica_id,) = _i32(buf, pos)
        pos += 4
    parts = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        topic, pos = rd_str(buf, pos)
        m, pos = rd_len(buf, pos)
        for _ in range(m):
            epoch = -1
            if version >= 4:
                index, epoch, ts = _iiq(buf, pos)
                pos += 16
            else:
                index, ts = _iq(buf, pos)
                pos += 12
            pos = skip_tags(buf, pos, flex)
            parts.append(TopicPartitionOffset(topic, None, index, -1, ts, epoch, 0, None))
        pos = skip_tags(buf, pos, flex)
    if version >= 10:
        pos += 4  # timeout_ms
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return ListOffsetsRequest(replica_id, isolation, parts)


def decode_list_offsets_response(buf, pos: int, version: int) -> ListOffsetsResponse:
    flex = version >= 6
    rd_str, rd_len, _, _ = flex_readers(flex)
    throttle = 0
    if version >= 2:
        (throttle,) = _i32(buf, pos)
        pos += 4
    parts = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        topic, pos = rd_str(buf, pos)
        m, pos = rd_len(buf, pos)
        for _ in range(m):
            index, error, ts, offset = _ihqq(buf, pos)
            pos += 22
            epoch = -1
            if version >= 4:
                (epoch,) = _i32(buf, pos)
                pos += 4
            pos = skip_tags(buf, pos, flex)
            parts.append(TopicPartitionOffset(topic, None, index, offset, ts, epoch, error, None))
        pos = skip_tags(buf, pos, flex)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return ListOffsetsResponse(throttle, parts)


class OffsetCommitRequest(NamedTuple):
    group_id: str
    generation_id_or_member_epoch: int
    member_id: str | None
    group_instance_id: str | None
    partitions: list[TopicPartitionOffset]


class OffsetCommitResponse(NamedTuple):
    throttle_time_ms: int
    partitions: list[TopicPartitionOffset]  # offset -1; error_code per partition


def decode_offset_commit_request(buf, pos: int, version: int) -> OffsetCommitRequest:
    flex = version >= 8
    ids = version >= 10
    rd_str, rd_len, _, _ = flex_readers(flex)
    group_id, pos = rd_str(buf, pos)
    (generation,) = _i32(buf, pos)
    member_id, pos = rd_str(buf, pos + 4)
    instance_id = None
    if version >= 7:
        instance_id, pos = rd_str(buf, pos)
    if 2 <= version <= 4:
        pos += 8  # retention_time_ms
    parts = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        m, pos = rd_len(buf, pos)
        for _ in range(m):
            index, offset = _iq(buf, pos)  # partition index, committed offset
            pos += 12
            epoch = -1
            if version >= 6:
                (epoch,) = _i32(buf, pos)  # committed leader epoch
                pos += 4
            elif version == 1:
                pos += 8  # commit timestamp
            metadata, pos = rd_str(buf, pos)
            pos = skip_tags(buf, pos, flex)
            parts.append(TopicPartitionOffset(topic, topic_id, index, offset, -1, epoch, 0, metadata))
        pos = skip_tags(buf, pos, flex)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return OffsetCommitRequest(group_id or "", generation, member_id, instance_id, parts)


def decode_offset_commit_response(buf, pos: int, version: int) -> OffsetCommitResponse:
    flex = version >= 8
    ids = version >= 10
    rd_str, rd_len, _, _ = flex_readers(flex)
    throttle = 0
    if version >= 3:
        (throttle,) = _i32(buf, pos)
        pos += 4
    parts = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        m, pos = rd_len(buf, pos)
        for _ in range(m):
            index, error = _ih(buf, pos)
            pos = skip_tags(buf, pos + 6, flex)
            parts.append(TopicPartitionOffset(topic, topic_id, index, -1, -1, -1, error, None))
        pos = skip_tags(buf, pos, flex)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return OffsetCommitResponse(throttle, parts)


class OffsetFetchGroup(NamedTuple):
    group_id: str
    member_id: str | None
    member_epoch: int
    partitions: list[TopicPartitionOffset] | None  # request: None = all partitions of the group
    error_code: int


class OffsetFetchRequest(NamedTuple):
    groups: list[OffsetFetchGroup]  # before v8 exactly one
    require_stable: bool


class OffsetFetchResponse(NamedTuple):
    throttle_time_ms: int
    groups: list[OffsetFetchGroup]
    error_code: int  # top-level error of v2-7


def decode_offset_fetch_request(buf, pos: int, version: int) -> OffsetFetchRequest:
    flex = version >= 6
    ids = version >= 10
    rd_str, rd_len, _, rd_ints = flex_readers(flex)
    groups = []
    if version <= 7:
        group_id, pos = rd_str(buf, pos)
        n, pos = rd_len(buf, pos)
        parts = None
        if n >= 0:
            parts = []
            for _ in range(n):
                topic, pos = rd_str(buf, pos)
                indexes, pos = rd_ints(buf, pos)
                pos = skip_tags(buf, pos, flex)
                parts.extend(TopicPartitionOffset(topic, None, i, -1, -1, -1, 0, None) for i in indexes or ())
        groups.append(OffsetFetchGroup(group_id or "", None, -1, parts, 0))
    else:
        n_groups, pos = rd_len(buf, pos)
        for _ in range(n_groups):
            group_id, pos = rd_str(buf, pos)
            member_id, member_epoch = None, -1
            if version >= 9:
                member_id, pos = rd_str(buf, pos)
                (member_epoch,) = _i32(buf, pos)
                pos += 4
            n, pos = rd_len(buf, pos)
            parts = None
            if n >= 0:
                parts = []
                for _ in range(n):
                    topic, topic_id, pos = read_topic(buf, pos, ids, flex)
                    indexes, pos = rd_ints(buf, pos)
                    pos = skip_tags(buf, pos, flex)
                    parts.extend(TopicPartitionOffset(topic, topic_id, i, -1, -1, -1, 0, None)
                                 for i in indexes or ())
            pos = skip_tags(buf, pos, flex)
            groups.append(OffsetFetchGroup(group_id or "", member_id, member_epoch, parts, 0))
    require_stable = False
    if version >= 7:
        require_stable = buf[pos] != 0
        pos += 1
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return OffsetFetchRequest(groups, require_stable)


def _offset_fetch_partitions(buf, pos, version, flex, ids, rd_str, rd_len, parts):
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        m, pos = rd_len(buf, pos)
        for _ in range(m):
            epoch = -1
            if version >= 5:
                index, offset, epoch = _i_q_i(buf, pos)
                pos += 16
            else:
                index, offset = _iq(buf, pos)
                pos += 12
            metadata, pos = rd_str(buf, pos)
            (error,) = _h(buf, pos)
            pos = skip_tags(buf, pos + 2, flex)
            parts.append(TopicPartitionOffset(topic, topic_id, index, offset, -1, epoch, error, metadata))
        pos = skip_tags(buf, pos, flex)
    return pos


def decode_offset_fetch_response(buf, pos: int, version: int) -> OffsetFetchResponse:
    flex = version >= 6
    ids = version >= 10
    rd_str, rd_len, _, _ = flex_readers(flex)
    throttle = 0
    if version >= 3:
        (throttle,) = _i32(buf, pos)
        pos += 4
    groups = []
    error = 0
    if version <= 7:
        parts: list[TopicPartitionOffset] = []
        pos = _offset_fetch_partitions(buf, pos, version, flex, ids, rd_str, rd_len, parts)
        if version >= 2:
            (error,) = _h(buf, pos)
            pos += 2
        groups.append(OffsetFetchGroup("", None, -1, parts, error))
    else:
        n_groups, pos = rd_len(buf, pos)
        for _ in range(n_groups):
            group_id, pos = rd_str(buf, pos)
            parts = []
            pos = _offset_fetch_partitions(buf, pos, version, flex, ids, rd_str, rd_len, parts)
            (g_error,) = _h(buf, pos)
            pos = skip_tags(buf, pos + 2, flex)
            groups.append(OffsetFetchGroup(group_id or "", None, -1, parts, g_error))
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return OffsetFetchResponse(throttle, groups, error)
