"""Fetch (api key 1), versions 4-18, and the client's view of KIP-227 fetch sessions.

Topic ids replace names from v13, flexible from v12, sessions (id, epoch, forgotten topics) from v7.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .primitives import (
    check_end, read_array_len, read_bytes_view, read_compact_array_len, read_compact_bytes_view,
    read_compact_int32_array, read_compact_string, read_int32_array, read_string, read_topic,
    skip_tagged_fields,
)
from .records import Holes, RecordBatch, read_batches

VERSIONS = (4, 18)
FLEXIBLE = 12
TOPIC_IDS = 13

_i32 = struct.Struct(">i").unpack_from
_iii = struct.Struct(">iii").unpack_from  # max_wait_ms, min_bytes, max_bytes
_bii = struct.Struct(">bii").unpack_from  # isolation_level, session_id, session_epoch
_iq = struct.Struct(">iq").unpack_from  # partition, fetch_offset (v4-v8)
_iiq = struct.Struct(">iiq").unpack_from  # partition, current_leader_epoch, fetch_offset (v9+)
_qi = struct.Struct(">qi").unpack_from
_i_q_i = struct.Struct(">iqi").unpack_from  # last_fetched_epoch, log_start_offset, partition_max_bytes
_ihqq = struct.Struct(">ihqq").unpack_from  # partition, error_code, high_watermark, last_stable_offset
_q = struct.Struct(">q").unpack_from
_ihi = struct.Struct(">ihi").unpack_from  # throttle_time_ms, error_code, session_id
_qq = struct.Struct(">qq").unpack_from
_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)

# Fetch session epochs (KIP-227)
INITIAL_EPOCH = 0  # full request that asks for a new session
FINAL_EPOCH = -1  # full request without a session (or closing one)
FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


class FetchRequestPartition(NamedTuple):
    topic: str | None
    topic_id: bytes | None
    partition: int
    fetch_offset: int
    current_leader_epoch: int
    last_fetched_epoch: int
    log_start_offset: int
    partition_max_bytes: int


class ForgottenTopic(NamedTuple):
    topic: str | None
    topic_id: bytes | None
    partitions: list[int]


class FetchRequest(NamedTuple):
    replica_id: int
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    isolation_level: int
    session_id: int
    session_epoch: int
    partitions: list[FetchRequestPartition]
    forgotten: list[ForgottenTopic]
    rack_id: str | None

    @property
    def is_full(self) -> bool:
        """A full request lists every partition the client wants; an incremental one only changes."""
        return self.session_epoch <= INITIAL_EPOCH


class AbortedTransaction(NamedTuple):
    producer_id: int
    first_offset: int


class FetchResponsePartition(NamedTuple):
    topic: str | None
    topic_id: bytes | None
    partition: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    aborted_transactions: list[AbortedTransaction] | None
    preferred_read_replica: int
    batches: list[RecordBatch]
    records_size: int


class FetchResponse(NamedTuple):
    throttle_time_ms: int
    error_code: int
    session_id: int
    partitions: list[FetchResponsePartition]


def decode_request(buf, pos: int, version: int) -> FetchRequest:
    flex = version >= FLEXIBLE
    ids = version >= TOPIC_IDS
    replica_id = -1
    if version <= 14:
        (replica_id,) = _i32(buf, pos)
        pos += 4
    max_wait_ms, min_bytes, max_bytes = _iii(buf, pos)
    pos += 12
    session_id, session_epoch = 0, FINAL_EPOCH
    if version >= 7:
        isolation_level, session_id, session_epoch = _bii(buf, pos)
        pos += 9
    else:
        isolation_level = buf[pos]
        pos += 1
    partitions = []
    n_topics, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    for _ in range(n_topics):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        n_parts, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
        for _ in range(n_parts):
            current_leader_epoch = last_fetched_epoch = -1
            if version >= 9:
                partition, current_leader_epoch, fetch_offset = _iiq(buf, pos)
                pos += 16
            else:
                partition, fetch_offset = _iq(buf, pos)
                pos += 12
            if version >= 12:
                last_fetched_epoch, log_start_offset, max_part = _i_q_i(buf, pos)
                pos += 16
            elif version >= 5:
                log_start_offset, max_part = _qi(buf, pos)
                pos += 12
            else:
                log_start_offset = -1
                (max_part,) = _i32(buf, pos)
                pos += 4
            if flex:
                pos = skip_tagged_fields(buf, pos)  # replica directory id, high watermark (v18)
            partitions.append(_new(FetchRequestPartition, (topic, topic_id, partition, fetch_offset,
                                                           current_leader_epoch, last_fetched_epoch,
                                                           log_start_offset, max_part)))
        if flex:
            pos = skip_tagged_fields(buf, pos)
    forgotten = []
    if version >= 7:
        n_forgotten, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
        for _ in range(n_forgotten):
            topic, topic_id, pos = read_topic(buf, pos, ids, flex)
            if flex:
                parts, pos = read_compact_int32_array(buf, pos)
                pos = skip_tagged_fields(buf, pos)
            else:
                parts, pos = read_int32_array(buf, pos)
            forgotten.append(ForgottenTopic(topic, topic_id, parts or []))
    rack_id = None
    if version >= 11:
        rack_id, pos = read_compact_string(buf, pos) if flex else read_string(buf, pos)
    if flex:
        pos = skip_tagged_fields(buf, pos)  # cluster id, replica state
    check_end(buf, pos)
    return FetchRequest(replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level, session_id,
                        session_epoch, partitions, forgotten, rack_id)


def decode_response(buf, pos: int, version: int, holes: Holes | None = None) -> FetchResponse:
    flex = version >= FLEXIBLE
    ids = version >= TOPIC_IDS
    error_code = session_id = 0
    if version >= 7:
        throttle_time_ms, error_code, session_id = _ihi(buf, pos)
        pos += 10
    else:
        (throttle_time_ms,) = _i32(buf, pos)
        pos += 4
    partitions = []
    n_topics, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
    for _ in range(n_topics):
        topic, topic_id, pos = read_topic(buf, pos, ids, flex)
        n_parts, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
        for _ in range(n_parts):
            partition, p_error, high_watermark, last_stable_offset = _ihqq(buf, pos)
            pos += 22
            log_start_offset = -1
            if version >= 5:
                (log_start_offset,) = _q(buf, pos)
                pos += 8
            n_aborted, pos = read_compact_array_len(buf, pos) if flex else read_array_len(buf, pos)
            aborted = None
            if n_aborted >= 0:
                aborted = []
                for _ in range(n_aborted):
                    aborted.append(AbortedTransaction(*_qq(buf, pos)))
                    pos += 16
                    if flex:
                        pos = skip_tagged_fields(buf, pos)
            preferred_read_replica = -1
            if version >= 11:
                (preferred_read_replica,) = _i32(buf, pos)
                pos += 4
            if holes is not None:  # a digest: batch headers without their records
                batches, size, pos = holes.read_records(buf, pos, flex)
            else:
                records, pos = read_compact_bytes_view(buf, pos) if flex else read_bytes_view(buf, pos)
                batches, size, _ = read_batches(records)
            if flex:
                pos = skip_tagged_fields(buf, pos)  # diverging epoch, current leader, snapshot id
            partitions.append(_new(FetchResponsePartition, (topic, topic_id, partition, p_error, high_watermark,
                                                            last_stable_offset, log_start_offset, aborted,
                                                            preferred_read_replica, batches, size)))
        if flex:
            pos = skip_tagged_fields(buf, pos)
    if flex:
        pos = skip_tagged_fields(buf, pos)  # node endpoints
    check_end(buf, pos)
    return FetchResponse(throttle_time_ms, error_code, session_id, partitions)


class FetchSession:
    """What the client has asked for in its fetch session with one broker (KIP-227).

    Incremental requests list only the partitions whose fetch state changed; the others keep the
    fetch offset of the last request that listed them. `fetch_offsets` maps (topic key, partition)
    to that offset, where the topic key is the topic id (v13+) or the name.
    """

    __slots__ = ("session_id", "epoch", "fetch_offsets", "known")

    def __init__(self) -> None:
        self.session_id = 0
        self.epoch = FINAL_EPOCH
        self.fetch_offsets: dict[tuple[object, int], int] = {}
        self.known = True  # False after joining an incremental session mid-way

    def on_request(self, request: FetchRequest) -> dict[tuple[object, int], int]:
        """Apply a request; returns the fetch offsets in force for it (a new dict, never changed
        afterwards, so a response is matched with the state of its own request even when later
        requests were seen first)."""
        if request.is_full:
            offsets = {}
            self.known = True
        elif request.session_id != self.session_id:
            offsets = {}  # a session we never saw start: unlisted offsets are unknown
            self.known = False
        else:
            offsets = dict(self.fetch_offsets)
        for p in request.partitions:
            offsets[(p.topic_id or p.topic, p.partition)] = p.fetch_offset
        for f in request.forgotten:
            key = f.topic_id or f.topic
            for part in f.partitions:
                offsets.pop((key, part), None)
        self.fetch_offsets = offsets
        self.session_id = request.session_id
        self.epoch = request.session_epoch
        return offsets

    def invalidate(self) -> None:
        """Requests may have been missed: offsets of unlisted partitions are unknown until a full request."""
        self.fetch_offsets = {}
        self.known = False

    def on_response(self, request: FetchRequest, response: FetchResponse) -> None:
        if response.error_code in (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH):
            self.session_id, self.epoch, self.fetch_offsets, self.known = 0, FINAL_EPOCH, {}, True
        elif request.session_epoch == INITIAL_EPOCH:
            self.session_id = response.session_id  # 0 when the broker declined to create one

    def fetch_offset(self, topic_key: object, partition: int) -> int | None:
        # After invalidate() the map holds only partitions listed since: those offsets are right.
        return self.fetch_offsets.get((topic_key, partition))
