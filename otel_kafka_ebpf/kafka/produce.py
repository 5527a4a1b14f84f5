"""Produce (api key 0), versions 0-13: topic ids instead of names from v13, flexible from v9.

Clients of Kafka 4 send v3+ (record batch v2). Brokers 4.x still advertise v0-2 (and refuse them),
so their layout is read too; their old message sets are skipped by length.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    check_end, read_array_len, read_bytes_view, read_compact_array_len, read_compact_bytes_view,
    read_compact_string, read_string, read_topic, skip_tagged_fields,
)
from .records import Holes, RecordBatch, read_batches

VERSIONS = (0, 13)
FLEXIBLE = 9
TOPIC_IDS = 13

_hi = struct.Struct(">hi").unpack_from  # acks, timeout_ms
_i32 = struct.Struct(">i").unpack_from
_ihq = struct.Struct(">ihq").unpack_from  # partition, error_code, base_offset
_i64 = struct.Struct(">q").unpack_from
_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)


class ProduceRequestPartition(NamedTuple):
    topic: str | None  # None from v13 (ids only) until resolved
    topic_id: bytes | None  # v13+
    partition: int
    batches: list[RecordBatch]
    records_size: int  # bytes of the records field


class ProduceRequest(NamedTuple):
    transactional_id: str | None
    acks: int
    timeout_ms: int
    partitions: list[ProduceRequestPartition]

    @property
    def expects_response(self) -> bool:
        return self.acks != 0


class ProduceResponsePartition(NamedTuple):
    topic: str | None
    topic_id: bytes | None
    partition: int
    error_code: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    error_message: str | None


class ProduceResponse(NamedTuple):
    partitions: list[ProduceResponsePartition]
    throttle_time_ms: int


def decode_request(buf, pos: int, version: int, holes: Holes | None = None) -> ProduceRequest:
    flex = version >= FLEXIBLE
    ids = version >= TOPIC_IDS
    transactional_id = None
    if flex:
        transactional_id, pos = read_compact_string(buf, pos)
    elif version >= 3:
        transactional_id, pos = read_string(buf, pos)
    acks, timeout_ms = _hi(buf, pos)
    pos += 6
    partitions = []
    n_topics, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    for _ in range(n_topics):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        n_parts, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
        for _ in range(n_parts):
            (index,) = _i32(buf, pos)
            pos += 4
            if holes is not None:  # a digest: batch headers without their records
                batches, size, pos = holes.read_records(buf, pos, flex)
            else:
                records, pos = read_compact_bytes_view(buf, pos) if flex else read_bytes_view(buf, pos)
                batches, size, _ = read_batches(records)
            if flex:
                pos = skip_tagged_fields(buf, pos)
            partitions.append(_new(ProduceRequestPartition, (topic, topic_id, index, batches, size)))
        if flex:
            pos = skip_tagged_fields(buf, pos)
    if flex:
        pos = skip_tagged_fields(buf, pos)
    check_end(buf, pos)
    return _new(ProduceRequest, (transactional_id, acks, timeout_ms, partitions))


def decode_response(buf, pos: int, version: int) -> ProduceResponse:
    flex = version >= FLEXIBLE
    ids = version >= TOPIC_IDS
    partitions = []
    n_topics, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    for _ in range(n_topics):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        n_parts, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
        for _ in range(n_parts):
            index, error_code, base_offset = _ihq(buf, pos)
            pos += 14
            log_append_time = -1
            if version >= 2:
                (log_append_time,) = _i64(buf, pos)
                pos += 8
            log_start_offset = -1
            if version >= 5:
                (log_start_offset,) = _i64(buf, pos)
                pos += 8
            error_message = None
            if version >= 8:
                n_errors, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
                for _ in range(n_errors):
                    pos += 4  # batch_index
                    if flex:
                        _msg, pos = read_compact_string(buf, pos)
                        pos = skip_tagged_fields(buf, pos)
                    else:
                        _msg, pos = read_string(buf, pos)
                if flex:
                    error_message, pos = read_compact_string(buf, pos)
                    pos = skip_tagged_fields(buf, pos)  # tag 0: current leader
                else:
                    error_message, pos = read_string(buf, pos)
            partitions.append(_new(ProduceResponsePartition, (topic, topic_id, index, error_code, base_offset,
                                                              log_append_time, log_start_offset, error_message)))
        if flex:
            pos = skip_tagged_fields(buf, pos)
    throttle_time_ms = 0
    if version >= 1:
        (throttle_time_ms,) = _i32(buf, pos)
        pos += 4
    if flex:
        pos = skip_tagged_fields(buf, pos)  # tag 0: node endpoints
    check_end(buf, pos)
    return _new(ProduceResponse, (partitions, throttle_time_ms))
