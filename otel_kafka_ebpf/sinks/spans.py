"""Produced and delivered batches -> `send` and `poll` spans (messaging semantic conventions 1.37).

One `send <topic>` span (PRODUCER) per topic-partition of each Produce request, and one
`poll <topic>` span (CONSUMER) per batch each consumer instance receives, a child of that batch's
`send` span in the trace derived from the batch's identity (correlate/ids.py). Spans are sampled by
ratio on those trace ids, so every agent keeps the same traces; spans with an error are always kept.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from ..correlate.batches import DeliveredBatch, ProducedBatch
from ..correlate.ids import batch_ids, span_id_of, trace_id_of
from ..kafka.errors import error_name
from . import otlp_wire as wire
from .resources import SCHEMA_URL, SCOPE, ResourceCatalog

# Attribute names (semantic conventions), and this agent's own under `otel_kafka_ebpf.`
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_CLIENT_ID = "messaging.client.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
OKE_CLUSTER_ID = "otel_kafka_ebpf.cluster.id"
OKE_LAST_OFFSET = "otel_kafka_ebpf.batch.last_offset"
OKE_HIGH_WATERMARK = "otel_kafka_ebpf.high_watermark"
OKE_FETCH_OFFSET = "otel_kafka_ebpf.fetch_offset"
OKE_SHARE_GROUP = "otel_kafka_ebpf.share_group"
OKE_UNLINKED = "otel_kafka_ebpf.unlinked"  # why a span could not take its batch's trace id

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KIND_PRODUCER = wire.span_kind(wire.SPAN_KIND_PRODUCER)
_KIND_CONSUMER = wire.span_kind(wire.SPAN_KIND_CONSUMER)
_FLAGS_ROOT = wire.SPAN_FLAGS_SAMPLED | wire.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE
_FLAGS_REMOTE_PARENT = _FLAGS_ROOT | wire.SPAN_FLAGS_CONTEXT_IS_REMOTE


class Sampler:
    """Keep a trace when the low 64 bits of its id fall under ratio * 2^64 (the SDK's TraceIdRatioBased)."""

    __slots__ = ("bound",)

    def __init__(self, ratio: float) -> None:
        self.bound = round(ratio * (1 << 64))

    def keeps(self, trace_id: bytes) -> bool:
        return int.from_bytes(trace_id[8:], "big") < self.bound


def traceparent_link(value: str) -> bytes | None:
    m = _TRACEPARENT.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return wire.link(bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2)), None, int(m.group(3), 16))


class SpanBuilder:
    """Batches -> (encoded Resource, encoded Span) pairs; the constant attributes are encoded once."""

    def __init__(self, resources: ResourceCatalog, ratio: float = 1.0) -> None:
        self.resources = resources
        self.sampler = Sampler(ratio)
        self.stats: Counter = Counter()
        self._names: dict[tuple[str, str], bytes] = {}
        self._common: dict[tuple, bytes] = {}

    def _name(self, operation: str, topic: str) -> bytes:
        key = (operation, topic)
        n = self._names.get(key)
        if n is None:
            if len(self._names) > 65536:
                self._names.clear()
            n = self._names[key] = wire.span_name(f"{operation} {topic}")
        return n

    def _common_attrs(self, operation: str, batch) -> bytes:
        server = batch.server
        group = batch.group if type(batch) is DeliveredBatch else None
        key = (operation, batch.topic_name, batch.client_id, server, batch.cluster_id, group)
        attrs = self._common.get(key)
        if attrs is None:
            if len(self._common) > 65536:
                self._common.clear()
            items = [
                (MESSAGING_SYSTEM, "kafka"),
                (MESSAGING_OPERATION_NAME, operation),
                (MESSAGING_OPERATION_TYPE, "send" if operation == "send" else "receive"),
                (MESSAGING_DESTINATION_NAME, batch.topic_name),
                (MESSAGING_CLIENT_ID, batch.client_id),
                (MESSAGING_CONSUMER_GROUP_NAME, group),
                (SERVER_ADDRESS, server.addr if server else None),
                (SERVER_PORT, server.port if server else None),
                (OKE_CLUSTER_ID, batch.cluster_id),
            ]
            attrs = self._common[key] = wire.span_attributes(items)
        return attrs

    def send(self, b: ProducedBatch) -> tuple[bytes, bytes] | None:
        if b.end_ns is None and b.acks != 0:
            self.stats["send_without_response"] += 1
            return None  # lost to the capture, or still in flight at stop: no end to report
        error = None
        if b.error_code:
            error = error_name(b.error_code)
        unlinked = None
        if b.base_offset is not None and b.topic is not None:
            trace_id, span_id = batch_ids(b.cluster_id, b.topic, b.partition, b.base_offset)
        else:
            unlinked = ("acks=0" if b.acks == 0 else "error" if error else
                        "topic name unknown" if b.topic is None else "no base offset")
            trace_id, span_id = trace_id_of("send", b.pid, b.client_id, b.conn_id, b.correlation_id, b.topic_name,
                                            b.partition, b.start_ns)
        if error is None and not self.sampler.keeps(trace_id):
            self.stats["spans_sampled_out"] += 1
            return None
        end_ns = b.end_ns if b.end_ns is not None else (b.request_end_ns or b.start_ns)
        variable = [(MESSAGING_DESTINATION_PARTITION_ID, str(b.partition)),
                    (MESSAGING_BATCH_MESSAGE_COUNT, b.record_count)]
        if error:
            variable.append((ERROR_TYPE, error))
        if unlinked:
            variable.append((OKE_UNLINKED, unlinked))
        attrs = self._common_attrs("send", b) + wire.span_attributes(variable)
        if b.base_offset is not None:
            attrs += wire.fresh_attributes(9, ((MESSAGING_KAFKA_OFFSET, b.base_offset),
                                               (OKE_LAST_OFFSET, b.base_offset + b.record_count - 1)))
        links = b"".join(wire.f_len(13, ln) for t in b.traceparents if (ln := traceparent_link(t)))
        span = wire.span(trace_id, span_id, None, self._name("send", b.topic_name), _KIND_PRODUCER, b.start_ns,
                         end_ns, attrs, links,
                         wire.span_status(wire.STATUS_ERROR, error) if error else b"", _FLAGS_ROOT)
        self.stats["send_spans"] += 1
        return self.resources.encoded(b.pid), span

    def poll(self, b: DeliveredBatch) -> tuple[bytes, bytes] | None:
        unlinked = None
        if b.topic is not None:
            trace_id, parent_id = batch_ids(b.cluster_id, b.topic, b.partition, b.base_offset)
        else:
            unlinked = "topic name unknown"
            trace_id, parent_id = batch_ids(b.cluster_id, b.topic_name, b.partition, b.base_offset)
        if not self.sampler.keeps(trace_id):
            self.stats["spans_sampled_out"] += 1
            return None
        span_id = span_id_of("poll", trace_id, b.pid, b.client_id, b.conn_id, b.start_ns)
        variable = [(MESSAGING_DESTINATION_PARTITION_ID, str(b.partition)),
                    (MESSAGING_BATCH_MESSAGE_COUNT, b.record_count)]
        if b.share:
            variable.append((OKE_SHARE_GROUP, True))
        if unlinked:
            variable.append((OKE_UNLINKED, unlinked))
        offsets = [(MESSAGING_KAFKA_OFFSET, b.base_offset), (OKE_LAST_OFFSET, b.last_offset),
                   (OKE_FETCH_OFFSET, b.fetch_offset)]
        if b.high_watermark >= 0:
            offsets.append((OKE_HIGH_WATERMARK, b.high_watermark))
        links = b"".join(wire.f_len(13, ln) for t in b.traceparents if (ln := traceparent_link(t)))
        span = wire.span(trace_id, span_id, parent_id, self._name("poll", b.topic_name), _KIND_CONSUMER,
                         b.start_ns, b.end_ns, self._common_attrs("poll", b) + wire.span_attributes(variable) +
                         wire.fresh_attributes(9, offsets), links, b"", _FLAGS_REMOTE_PARENT)
        self.stats["poll_spans"] += 1
        return self.resources.encoded(b.pid), span


def build_request(spans: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An ExportTraceServiceRequest of (encoded Resource, encoded Span) pairs, grouped by resource."""
    by_resource: dict[bytes, list[bytes]] = defaultdict(list)
    for res, span in spans:
        by_resource[res].append(span)
    return wire.export_trace_request(((res, SCOPE, spans) for res, spans in by_resource.items()), SCHEMA_URL)


class SpanSink:
    """The pipeline's span output: builds spans and hands the exporter one request per batch of spans."""

    def __init__(self, builder: SpanBuilder, exporter, *, max_batch: int = 512, delay_ns: int = 1_000_000_000) -> None:
        self.builder = builder
        self.exporter = exporter
        self.max_batch = max_batch
        self.delay_ns = delay_ns
        self._pending: list[tuple[bytes, bytes]] = []
        self._oldest_ns: int | None = None

    def batches(self, batches: Iterable, now_ns: int) -> None:
        send, poll = self.builder.send, self.builder.poll
        for b in batches:
            out = send(b) if type(b) is ProducedBatch else poll(b)
            if out is not None:
                pending = self._pending  # a new list after each flush
                if not pending:
                    self._oldest_ns = now_ns
                pending.append(out)
                if len(pending) >= self.max_batch:
                    self.flush()

    def tick(self, now_ns: int) -> None:
        if self._pending and self._oldest_ns is not None and now_ns - self._oldest_ns >= self.delay_ns:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            spans, self._pending = self._pending, []
            self.exporter.submit("traces", build_request(spans), len(spans))

    def close(self) -> None:
        self.flush()
