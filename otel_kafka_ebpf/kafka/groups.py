"""Group coordination: FindCoordinator (10) v0-6, JoinGroup (11) v0-9, Heartbeat (12) v0-4,
LeaveGroup (13) v0-5, SyncGroup (14) v0-5 (classic protocol) and ConsumerGroupHeartbeat (68)
v0-1 (KIP-848). Protocol metadata and assignments stay opaque bytes views."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    DecodeError, check_end, flex_readers, read_compact_array_len, read_compact_int32_array, read_compact_string,
    read_uuid, skip_tagged_fields, skip_tags,
)

FIND_COORDINATOR_VERSIONS = (0, 6)
JOIN_GROUP_VERSIONS = (0, 9)
HEARTBEAT_VERSIONS = (0, 4)
LEAVE_GROUP_VERSIONS = (0, 5)
SYNC_GROUP_VERSIONS = (0, 5)
CONSUMER_GROUP_HEARTBEAT_VERSIONS = (0, 1)

_i32 = struct.Struct(">i").unpack_from
_h = struct.Struct(">h").unpack_from
_ih = struct.Struct(">ih").unpack_from
_hi = struct.Struct(">hi").unpack_from
_ii = struct.Struct(">ii").unpack_from


def _throttle(buf, pos: int, present: bool) -> tuple[int, int]:
    if not present:
        return 0, pos
    return _i32(buf, pos)[0], pos + 4


# --- FindCoordinator -----------------------------------------------------------------------------

class FindCoordinatorRequest(NamedTuple):
    key_type: int  # 0 group, 1 transaction, 2 share
    keys: list[str]


class Coordinator(NamedTuple):
    key: str | None  # None before v4 (one key per request)
    node_id: int
    host: str
    port: int
    error_code: int


class FindCoordinatorResponse(NamedTuple):
    throttle_time_ms: int
    coordinators: list[Coordinator]


def decode_find_coordinator_request(buf, pos: int, version: int) -> FindCoordinatorRequest:
    flex = version >= 3
    rd_str, rd_len, _, _ = flex_readers(flex)
    keys = []
    if version <= 3:
        key, pos = rd_str(buf, pos)
        keys.append(key or "")
    key_type = 0
    if version >= 1:
        key_type = buf[pos]
        pos += 1
    if version >= 4:
        n, pos = rd_len(buf, pos)
        for _ in range(n):
            key, pos = rd_str(buf, pos)
            keys.append(key or "")
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return FindCoordinatorRequest(key_type, keys)


def decode_find_coordinator_response(buf, pos: int, version: int) -> FindCoordinatorResponse:
    flex = version >= 3
    rd_str, rd_len, _, _ = flex_readers(flex)
    throttle, pos = _throttle(buf, pos, version >= 1)
    coordinators = []
    if version <= 3:
        (error,) = _h(buf, pos)
        pos += 2
        if version >= 1:
            _msg, pos = rd_str(buf, pos)
        (node_id,) = _i32(buf, pos)
        host, pos = rd_str(buf, pos + 4)
        (port,) = _i32(buf, pos)
        pos += 4
        coordinators.append(Coordinator(None, node_id, host or "", port, error))
    else:
        n, pos = rd_len(buf, pos)
        for _ in range(n):
            key, pos = rd_str(buf, pos)
            (node_id,) = _i32(buf, pos)
            host, pos = rd_str(buf, pos + 4)
            port, error = _ih(buf, pos)
            _msg, pos = rd_str(buf, pos + 6)
            pos = skip_tags(buf, pos, flex)
            coordinators.append(Coordinator(key, node_id, host or "", port, error))
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return FindCoordinatorResponse(throttle, coordinators)


# --- JoinGroup / SyncGroup / Heartbeat / LeaveGroup (classic) ----------------------------------

class JoinGroupRequest(NamedTuple):
    group_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    member_id: str
    group_instance_id: str | None
    protocol_type: str
    protocols: list[str]  # assignor names, e.g. "range", "cooperative-sticky"


class JoinGroupResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    generation_id: int
    protocol_name: str | None
    leader: str
    member_id: str
    members: list[str]  # member ids (the leader sees all)


def decode_join_group_request(buf, pos: int, version: int) -> JoinGroupRequest:
    flex = version >= 6
    rd_str, rd_len, rd_bytes, _ = flex_readers(flex)
    group_id, pos = rd_str(buf, pos)
    (session_timeout,) = _i32(buf, pos)
    pos += 4
    rebalance_timeout = -1
    if version >= 1:
        (rebalance_timeout,) = _i32(buf, pos)
        pos += 4
    member_id, pos = rd_str(buf, pos)
    instance_id = None
    if version >= 5:
        instance_id, pos = rd_str(buf, pos)
    protocol_type, pos = rd_str(buf, pos)
    protocols = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        name, pos = rd_str(buf, pos)
        _meta, pos = rd_bytes(buf, pos)
        pos = skip_tags(buf, pos, flex)
        protocols.append(name or "")
    if version >= 8:
        _reason, pos = rd_str(buf, pos)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return JoinGroupRequest(group_id or "", session_timeout, rebalance_timeout, member_id or "", instance_id,
                            protocol_type or "", protocols)


def decode_join_group_response(buf, pos: int, version: int) -> JoinGroupResponse:
    flex = version >= 6
    rd_str, rd_len, rd_bytes, _ = flex_readers(flex)
    throttle, pos = _throttle(buf, pos, version >= 2)
    error, generation = _hi(buf, pos)
    pos += 6
    if version >= 7:
        _protocol_type, pos = rd_str(buf, pos)
    protocol_name, pos = rd_str(buf, pos)
    leader, pos = rd_str(buf, pos)
    if version >= 9:
        pos += 1  # skip_assignment
    member_id, pos = rd_str(buf, pos)
    members = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        mid, pos = rd_str(buf, pos)
        if version >= 5:
            _instance, pos = rd_str(buf, pos)
        _meta, pos = rd_bytes(buf, pos)
        pos = skip_tags(buf, pos, flex)
        members.append(mid or "")
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return JoinGroupResponse(throttle, error, generation, protocol_name, leader or "", member_id or "", members)


class SyncGroupRequest(NamedTuple):
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None
    assignments: list[tuple[str, memoryview]]  # (member id, opaque assignment)


class SyncGroupResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    assignment: memoryview | None


def decode_sync_group_request(buf, pos: int, version: int) -> SyncGroupRequest:
    flex = version >= 4
    rd_str, rd_len, rd_bytes, _ = flex_readers(flex)
    group_id, pos = rd_str(buf, pos)
    (generation,) = _i32(buf, pos)
    member_id, pos = rd_str(buf, pos + 4)
    instance_id = None
    if version >= 3:
        instance_id, pos = rd_str(buf, pos)
    if version >= 5:
        _ptype, pos = rd_str(buf, pos)
        _pname, pos = rd_str(buf, pos)
    assignments = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        mid, pos = rd_str(buf, pos)
        data, pos = rd_bytes(buf, pos)
        pos = skip_tags(buf, pos, flex)
        assignments.append((mid or "", data))
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return SyncGroupRequest(group_id or "", generation, member_id or "", instance_id, assignments)


def decode_sync_group_response(buf, pos: int, version: int) -> SyncGroupResponse:
    flex = version >= 4
    rd_str, _, rd_bytes, _ = flex_readers(flex)
    throttle, pos = _throttle(buf, pos, version >= 1)
    (error,) = _h(buf, pos)
    pos += 2
    if version >= 5:
        _ptype, pos = rd_str(buf, pos)
        _pname, pos = rd_str(buf, pos)
    assignment, pos = rd_bytes(buf, pos)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return SyncGroupResponse(throttle, error, assignment)


class HeartbeatRequest(NamedTuple):
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None


class GroupErrorResponse(NamedTuple):
    """Heartbeat and LeaveGroup responses: a throttle, an error, and (LeaveGroup v3+) per-member errors."""

    throttle_time_ms: int
    error_code: int
    members: list[tuple[str, int]]  # (member id, error code)


def decode_heartbeat_request(buf, pos: int, version: int) -> HeartbeatRequest:
    flex = version >= 4
    rd_str, _, _, _ = flex_readers(flex)
    group_id, pos = rd_str(buf, pos)
    (generation,) = _i32(buf, pos)
    member_id, pos = rd_str(buf, pos + 4)
    instance_id = None
    if version >= 3:
        instance_id, pos = rd_str(buf, pos)
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return HeartbeatRequest(group_id or "", generation, member_id or "", instance_id)


def decode_heartbeat_response(buf, pos: int, version: int) -> GroupErrorResponse:
    flex = version >= 4
    throttle, pos = _throttle(buf, pos, version >= 1)
    (error,) = _h(buf, pos)
    pos = skip_tags(buf, pos + 2, flex)
    check_end(buf, pos)
    return GroupErrorResponse(throttle, error, [])


class LeaveGroupRequest(NamedTuple):
    group_id: str
    members: list[tuple[str, str | None]]  # (member id, group instance id)


def decode_leave_group_request(buf, pos: int, version: int) -> LeaveGroupRequest:
    flex = version >= 4
    rd_str, rd_len, _, _ = flex_readers(flex)
    group_id, pos = rd_str(buf, pos)
    members = []
    if version <= 2:
        member_id, pos = rd_str(buf, pos)
        members.append((member_id or "", None))
    else:
        n, pos = rd_len(buf, pos)
        for _ in range(n):
            member_id, pos = rd_str(buf, pos)
            instance_id, pos = rd_str(buf, pos)
            if version >= 5:
                _reason, pos = rd_str(buf, pos)
            pos = skip_tags(buf, pos, flex)
            members.append((member_id or "", instance_id))
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return LeaveGroupRequest(group_id or "", members)


def decode_leave_group_response(buf, pos: int, version: int) -> GroupErrorResponse:
    flex = version >= 4
    rd_str, rd_len, _, _ = flex_readers(flex)
    throttle, pos = _throttle(buf, pos, version >= 1)
    (error,) = _h(buf, pos)
    pos += 2
    members = []
    if version >= 3:
        n, pos = rd_len(buf, pos)
        for _ in range(n):
            member_id, pos = rd_str(buf, pos)
            _instance, pos = rd_str(buf, pos)
            (m_error,) = _h(buf, pos)
            pos = skip_tags(buf, pos + 2, flex)
            members.append((member_id or "", m_error))
    pos = skip_tags(buf, pos, flex)
    check_end(buf, pos)
    return GroupErrorResponse(throttle, error, members)


# --- ConsumerGroupHeartbeat (KIP-848) --------------------------------------------------------

class TopicPartitions(NamedTuple):
    topic_id: bytes
    partitions: list[int]


class ConsumerGroupHeartbeatRequest(NamedTuple):
    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None
    rack_id: str | None
    rebalance_timeout_ms: int
    subscribed_topic_names: list[str] | None  # None: unchanged since the last heartbeat
    subscribed_topic_regex: str | None
    server_assignor: str | None
    owned: list[TopicPartitions] | None  # None: unchanged


class ConsumerGroupHeartbeatResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    error_message: str | None
    member_id: str | None
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: list[TopicPartitions] | None  # None: unchanged


def _topic_partitions(buf, pos: int) -> tuple[list[TopicPartitions] | None, int]:
    n, pos = read_compact_array_len(buf, pos)
    if n < 0:
        return None, pos
    out = []
    for _ in range(n):
        topic_id, pos = read_uuid(buf, pos)
        parts, pos = read_compact_int32_array(buf, pos)
        pos = skip_tagged_fields(buf, pos)
        out.append(TopicPartitions(topic_id, parts or []))
    return out, pos


def decode_consumer_group_heartbeat_request(buf, pos: int, version: int) -> ConsumerGroupHeartbeatRequest:
    group_id, pos = read_compact_string(buf, pos)
    member_id, pos = read_compact_string(buf, pos)
    (member_epoch,) = _i32(buf, pos)
    instance_id, pos = read_compact_string(buf, pos + 4)
    rack_id, pos = read_compact_string(buf, pos)
    (rebalance_timeout,) = _i32(buf, pos)
    pos += 4
    names = None
    n, pos = read_compact_array_len(buf, pos)
    if n >= 0:
        names = []
        for _ in range(n):
            name, pos = read_compact_string(buf, pos)
            names.append(name or "")
    regex = None
    if version >= 1:
        regex, pos = read_compact_string(buf, pos)
    assignor, pos = read_compact_string(buf, pos)
    owned, pos = _topic_partitions(buf, pos)
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ConsumerGroupHeartbeatRequest(group_id or "", member_id or "", member_epoch, instance_id, rack_id,
                                         rebalance_timeout, names, regex, assignor, owned)


def decode_consumer_group_heartbeat_response(buf, pos: int, version: int) -> ConsumerGroupHeartbeatResponse:
    throttle, error = _ih(buf, pos)
    message, pos = read_compact_string(buf, pos + 6)
    member_id, pos = read_compact_string(buf, pos)
    member_epoch, interval = _ii(buf, pos)
    pos += 8
    assignment = None
    if buf[pos] == 0xFF:  # nullable struct: -1 marks null
        pos += 1
    else:
        if buf[pos] != 1:
            raise DecodeError("bad nullable struct marker")
        assignment, pos = _topic_partitions(buf, pos + 1)
        assignment = assignment or []
        pos = skip_tagged_fields(buf, pos)
    pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return ConsumerGroupHeartbeatResponse(throttle, error, message, member_id, member_epoch, interval, assignment)
