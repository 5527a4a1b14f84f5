"""Metadata (api key 3), versions 0-13: brokers, cluster id, and topic name <-> topic id (v10+)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    check_end, read_array_len, read_compact_array_len, read_compact_int32_array, read_compact_string,
    read_int32_array, read_string, read_uuid, skip_tagged_fields,
)

VERSIONS = (0, 13)
FLEXIBLE = 9

_i32 = struct.Struct(">i").unpack_from
_h = struct.Struct(">h").unpack_from
_hiii = struct.Struct(">hiii").unpack_from  # error_code, partition, leader_id, leader_epoch
_hii = struct.Struct(">hii").unpack_from


class MetadataRequest(NamedTuple):
    topics: list[tuple[bytes | None, str | None]] | None  # (topic_id, name); None = all topics
    allow_auto_topic_creation: bool


class Broker(NamedTuple):
    node_id: int
    host: str
    port: int
    rack: str | None


class MetadataPartition(NamedTuple):
    error_code: int
    partition: int
    leader_id: int
    leader_epoch: int
    replicas: list[int]
    isr: list[int]
    offline_replicas: list[int]


class MetadataTopic(NamedTuple):
    error_code: int
    name: str | None
    topic_id: bytes | None  # None before v10; all zeros when the broker has none
    is_internal: bool
    partitions: list[MetadataPartition]


class MetadataResponse(NamedTuple):
    throttle_time_ms: int
    brokers: list[Broker]
    cluster_id: str | None
    controller_id: int
    topics: list[MetadataTopic]
    error_code: int


def decode_request(buf, pos: int, version: int) -> MetadataRequest:
    flex = version >= FLEXIBLE
    n, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    topics = None
    if n >= 0:
        topics = []
        for _ in range(n):
            topic_id = None
            if version >= 10:
                topic_id, pos = read_uuid(buf, pos)
            if flex:
                name, pos = read_compact_string(buf, pos)
                pos = skip_tagged_fields(buf, pos)
            else:
                name, pos = read_string(buf, pos)
            topics.append((topic_id, name))
    allow_auto = True
    if version >= 4:
        allow_auto = buf[pos] != 0
        pos += 1
    if 8 <= version <= 10:
        pos += 2  # include cluster / topic authorized operations
    elif version >= 11:
        pos += 1  # include topic authorized operations
    if flex:
        pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return MetadataRequest(topics, allow_auto)


def decode_response(buf, pos: int, version: int) -> MetadataResponse:
    flex = version >= FLEXIBLE
    rd_str = read_compact_string if flex else read_string
    rd_len = read_compact_array_len if flex else read_array_len
    rd_ints = read_compact_int32_array if flex else read_int32_array
    throttle = 0
    if version >= 3:
        (throttle,) = _i32(buf, pos)
        pos += 4
    brokers = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        (node_id,) = _i32(buf, pos)
        host, pos = rd_str(buf, pos + 4)
        (port,) = _i32(buf, pos)
        pos += 4
        rack = None
        if version >= 1:
            rack, pos = rd_str(buf, pos)
        if flex:
            pos = skip_tagged_fields(buf, pos)
        brokers.append(Broker(node_id, host or "", port, rack))
    cluster_id = None
    if version >= 2:
        cluster_id, pos = rd_str(buf, pos)
    controller_id = -1
    if version >= 1:
        (controller_id,) = _i32(buf, pos)
        pos += 4
    topics = []
    n, pos = rd_len(buf, pos)
    for _ in range(n):
        (t_error,) = _h(buf, pos)
        name, pos = rd_str(buf, pos + 2)
        topic_id = None
        if version >= 10:
            topic_id, pos = read_uuid(buf, pos)
        is_internal = False
        if version >= 1:
            is_internal = buf[pos] != 0
            pos += 1
        partitions = []
        n_parts, pos = rd_len(buf, pos)
        for _ in range(n_parts):
            leader_epoch = -1
            if version >= 7:
                p_error, index, leader, leader_epoch = _hiii(buf, pos)
                pos += 14
            else:
                p_error, index, leader = _hii(buf, pos)
                pos += 10
            replicas, pos = rd_ints(buf, pos)
            isr, pos = rd_ints(buf, pos)
            offline = []
            if version >= 5:
                offline, pos = rd_ints(buf, pos)
            if flex:
                pos = skip_tagged_fields(buf, pos)
            partitions.append(MetadataPartition(p_error, index, leader, leader_epoch, replicas or [], isr or [],
                                                offline or []))
        if version >= 8:
            pos += 4  # topic authorized operations
        if flex:
            pos = skip_tagged_fields(buf, pos)
        topics.append(MetadataTopic(t_error, name, topic_id, is_internal, partitions))
    if 8 <= version <= 10:
        pos += 4  # cluster authorized operations
    error_code = 0
    if version >= 13:
        (error_code,) = _h(buf, pos)
        pos += 2
    if flex:
        pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return MetadataResponse(throttle, brokers, cluster_id, controller_id, topics, error_code)
