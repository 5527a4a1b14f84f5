"""Trace and span ids derived from what a batch is, so that agents on different nodes agree without talking.

A produced batch is identified by its cluster, its topic name, its partition and its base offset:
the producer learns the base offset from the Produce response, every consumer sees the same batch
(same base offset) in its Fetch responses. Each agent hashes that identity the same way:

    h = BLAKE2b-192(key=b"", person=b"oke-batch-v1", data=
                    utf8(cluster id) 0x00 utf8(topic name) 0x00 int32be(partition) int64be(base offset))
    trace id      = h[0:16]
    send span id  = h[16:24]

so the `poll` span of any consumer, on any node, is a child of the producer's `send` span in one
trace. Other spans (a consumer's `poll`, a `send` that cannot be linked) get ids hashed from their
own capture facts, so a replay of a recording gives the same ids as the live run. An all-zero id is
invalid in OpenTelemetry; the hash is then nudged (last byte set to 1), which a 2^-64 event allows.
"""

from __future__ import annotations

import hashlib
import struct

_PERSON_BATCH = b"oke-batch-v1"
_PERSON_SPAN = b"oke-span-v1"
_PARTITION_OFFSET = struct.Struct(">iq")
_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


def _nonzero(trace_id: bytes, span_id: bytes) -> tuple[bytes, bytes]:
    if trace_id == _ZERO16:
        trace_id = trace_id[:15] + b"\x01"
    if span_id == _ZERO8:
        span_id = span_id[:7] + b"\x01"
    return trace_id, span_id


def batch_ids(cluster_id: str | None, topic: str, partition: int, base_offset: int) -> tuple[bytes, bytes]:
    """(trace id, send span id) of the produced batch with this identity."""
    data = (cluster_id or "").encode() + b"\0" + topic.encode() + b"\0" + _PARTITION_OFFSET.pack(partition, base_offset)
    h = hashlib.blake2b(data, digest_size=24, person=_PERSON_BATCH).digest()
    return _nonzero(h[:16], h[16:])


def span_id_of(*facts: object) -> bytes:
    """A span id hashed from facts that tell this span apart (a poll: consumer, connection, time)."""
    h = hashlib.blake2b(repr(facts).encode(), digest_size=8, person=_PERSON_SPAN).digest()
    return h if h != _ZERO8 else h[:7] + b"\x01"


def trace_id_of(*facts: object) -> tuple[bytes, bytes]:
    """(trace id, span id) for a span that starts a trace of its own (a `send` with no base offset)."""
    h = hashlib.blake2b(repr(facts).encode(), digest_size=24, person=_PERSON_SPAN).digest()
    return _nonzero(h[:16], h[16:])
