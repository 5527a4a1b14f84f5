"""OTLP protobuf messages written as bytes, without building message objects.

The agent emits many small, similar spans; building `opentelemetry.proto` objects field by field
costs several microseconds each, while most of a span's bytes (its resource, scope and the
attributes shared by every batch of one client and topic) are the same from span to span. Here a
message is the concatenation of its encoded fields, and the constant parts are encoded once and
reused. Field numbers are those of opentelemetry-proto (common/v1, resource/v1, trace/v1,
metrics/v1, logs/v1, collector/*/v1); tests parse the output with the official classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack

# Span.SpanKind
SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 1, 2, 3, 4, 5
# Status.StatusCode
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
# SpanFlags: W3C trace flags in bits 0-7; bits 8-9 say whether the parent is remote
SPAN_FLAGS_SAMPLED = 0x01
SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE = 0x100
SPAN_FLAGS_CONTEXT_IS_REMOTE = 0x200
# AggregationTemporality
TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE = 1, 2


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 on the wire: two's complement in 10 bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TAGS: dict[tuple[int, int], bytes] = {}


def tag(field: int, wire_type: int) -> bytes:
    key = (field, wire_type)
    t = _TAGS.get(key)
    if t is None:
        t = _TAGS[key] = varint((field << 3) | wire_type)
    return t


def f_len(field: int, data: bytes) -> bytes:
    """A length-delimited field: bytes, a string, or an embedded message."""
    return tag(field, _LEN) + varint(len(data)) + data


def f_str(field: int, text: str) -> bytes:
    return f_len(field, text.encode())


def f_varint(field: int, n: int) -> bytes:
    return tag(field, _VARINT) + varint(n)


def f_fixed64(field: int, n: int) -> bytes:
    return tag(field, _I64) + _fixed64(n)


def f_fixed32(field: int, n: int) -> bytes:
    return tag(field, _I32) + _fixed32(n)


def f_double(field: int, x: float) -> bytes:
    return tag(field, _I64) + _double(x)


# --- common/v1 ---------------------------------------------------------------------------------

def any_value(value: object) -> bytes:
    """AnyValue: string 1, bool 2, int 3, double 4, array 5, bytes 7."""
    if isinstance(value, bool):
        return f_varint(2, int(value))
    if isinstance(value, str):
        return f_str(1, value)
    if isinstance(value, int):
        return f_varint(3, value)
    if isinstance(value, float):
        return f_double(4, value)
    if isinstance(value, (bytes, bytearray)):
        return f_len(7, bytes(value))
    if isinstance(value, (list, tuple)):
        return f_len(5, b"".join(f_len(1, any_value(v)) for v in value))
    return f_str(1, str(value))


_KV_CACHE: dict[tuple[str, object], bytes] = {}
_KV_CACHE_MAX = 65536


def fresh_key_value(key: str, value: object) -> bytes:
    """A KeyValue (key 1, value 2), encoded each time."""
    return f_str(1, key) + f_len(2, any_value(value))


def key_value(key: str, value: object) -> bytes:
    """A KeyValue, cached for hashable values: most attributes repeat."""
    ck = (key, value, type(value))
    try:
        kv = _KV_CACHE.get(ck)
    except TypeError:  # a list value
        return fresh_key_value(key, value)
    if kv is None:
        kv = fresh_key_value(key, value)
        if len(_KV_CACHE) >= _KV_CACHE_MAX:
            _KV_CACHE.clear()
        _KV_CACHE[ck] = kv
    return kv


def attributes(field: int, attrs: Mapping[str, object] | Iterable[tuple[str, object]]) -> bytes:
    """Repeated KeyValue under `field`; None values are left out."""
    items = attrs.items() if isinstance(attrs, Mapping) else attrs
    return b"".join(f_len(field, key_value(k, v)) for k, v in items if v is not None)


def fresh_attributes(field: int, attrs: Iterable[tuple[str, object]]) -> bytes:
    """As `attributes`, for values that seldom repeat (offsets): encoded each time, kept out of the cache,
    which they would only fill."""
    return b"".join(f_len(field, fresh_key_value(k, v)) for k, v in attrs if v is not None)


def resource(attrs: Mapping[str, object]) -> bytes:
    """Resource: attributes 1."""
    return attributes(1, attrs)


def scope(name: str, version: str) -> bytes:
    """InstrumentationScope: name 1, version 2."""
    return f_str(1, name) + f_str(2, version)


# --- trace/v1 ----------------------------------------------------------------------------------

def status(code: int, message: str | None = None) -> bytes:
    """Status: message 2, code 3."""
    return (f_str(2, message) if message else b"") + (f_varint(3, code) if code else b"")


def link(trace_id: bytes, span_id: bytes, trace_state: str | None = None, flags: int = 0) -> bytes:
    """Span.Link: trace_id 1, span_id 2, trace_state 3, flags 6."""
    out = f_len(1, trace_id) + f_len(2, span_id)
    if trace_state:
        out += f_str(3, trace_state)
    if flags:
        out += f_fixed32(6, flags)
    return out


_SPAN_TRACE_ID = tag(1, _LEN) + b"\x10"  # 16 bytes
_SPAN_SPAN_ID = tag(2, _LEN) + b"\x08"  # 8 bytes
_SPAN_PARENT_ID = tag(4, _LEN) + b"\x08"
_SPAN_START = tag(7, _I64)
_SPAN_END = tag(8, _I64)


def span(trace_id: bytes, span_id: bytes, parent_span_id: bytes | None, name_field: bytes, kind_field: bytes,
         start_ns: int, end_ns: int, attrs: bytes, links: bytes = b"", status_field: bytes = b"",
         flags: int = SPAN_FLAGS_SAMPLED) -> bytes:
    """Span: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8, attributes 9,
    links 13, status 15, flags 16. `name_field` and `kind_field` come encoded (see `span_name`)."""
    return b"".join((
        _SPAN_TRACE_ID, trace_id, _SPAN_SPAN_ID, span_id,
        (_SPAN_PARENT_ID + parent_span_id) if parent_span_id else b"",
        name_field, kind_field, _SPAN_START, _fixed64(start_ns), _SPAN_END, _fixed64(end_ns),
        attrs, links, status_field, f_fixed32(16, flags),
    ))


def span_name(name: str) -> bytes:
    return f_str(5, name)


def span_kind(kind: int) -> bytes:
    return f_varint(6, kind)


def span_attributes(attrs: Iterable[tuple[str, object]]) -> bytes:
    return attributes(9, attrs)


def span_links(links: Iterable[bytes]) -> bytes:
    return b"".join(f_len(13, ln) for ln in links)


def span_status(code: int, message: str | None = None) -> bytes:
    body = status(code, message)
    return f_len(15, body) if body else b""


def export_trace_request(groups: Iterable[tuple[bytes, bytes, Iterable[bytes]]], schema_url: str = "") -> bytes:
    """ExportTraceServiceRequest from (encoded Resource, encoded InstrumentationScope, encoded Spans).

    ResourceSpans: resource 1, scope_spans 2, schema_url 3; ScopeSpans: scope 1, spans 2, schema_url 3."""
    out = []
    for res, scp, spans in groups:
        scope_spans = f_len(1, scp) + b"".join(f_len(2, s) for s in spans)
        if schema_url:
            scope_spans += f_str(3, schema_url)
        body = f_len(1, res) + f_len(2, scope_spans)
        if schema_url:
            body += f_str(3, schema_url)
        out.append(f_len(1, body))
    return b"".join(out)


# --- metrics/v1 --------------------------------------------------------------------------------

def number_point(attrs: bytes, start_ns: int, time_ns: int, value: int | float) -> bytes:
    """NumberDataPoint: start 2, time 3, as_double 4, as_int 6 (sfixed64), attributes 7."""
    v = f_double(4, value) if isinstance(value, float) else tag(6, _I64) + _fixed64(value & 0xFFFFFFFFFFFFFFFF)
    return f_fixed64(2, start_ns) + f_fixed64(3, time_ns) + v + attrs


def histogram_point(attrs: bytes, start_ns: int, time_ns: int, count: int, total: float,
                    bucket_counts: Iterable[int], bounds: Iterable[float],
                    minimum: float | None = None, maximum: float | None = None) -> bytes:
    """HistogramDataPoint: start 2, time 3, count 4 (fixed64), sum 5, bucket_counts 6 (packed fixed64),
    explicit_bounds 7 (packed double), attributes 9, min 11, max 12."""
    counts = b"".join(_fixed64(c) for c in bucket_counts)
    bnds = b"".join(_double(b) for b in bounds)
    out = f_fixed64(2, start_ns) + f_fixed64(3, time_ns) + f_fixed64(4, count) + f_double(5, total)
    out += f_len(6, counts) + f_len(7, bnds) + attrs
    if minimum is not None:
        out += f_double(11, minimum)
    if maximum is not None:
        out += f_double(12, maximum)
    return out


def point_attributes(attrs: Mapping[str, object] | Iterable[tuple[str, object]], field: int) -> bytes:
    return attributes(field, attrs)


def gauge(points: Iterable[bytes]) -> bytes:
    """Gauge: data_points 1 (NumberDataPoint)."""
    return b"".join(f_len(1, p) for p in points)


def sum_(points: Iterable[bytes], monotonic: bool, temporality: int = TEMPORALITY_CUMULATIVE) -> bytes:
    """Sum: data_points 1, aggregation_temporality 2, is_monotonic 3."""
    return b"".join(f_len(1, p) for p in points) + f_varint(2, temporality) + (f_varint(3, 1) if monotonic else b"")


def histogram(points: Iterable[bytes], temporality: int = TEMPORALITY_CUMULATIVE) -> bytes:
    """Histogram: data_points 1, aggregation_temporality 2."""
    return b"".join(f_len(1, p) for p in points) + f_varint(2, temporality)


def metric(name: str, description: str, unit: str, *, gauge_body: bytes | None = None,
           sum_body: bytes | None = None, histogram_body: bytes | None = None) -> bytes:
    """Metric: name 1, description 2, unit 3, gauge 5, sum 7, histogram 9."""
    out = f_str(1, name) + (f_str(2, description) if description else b"") + (f_str(3, unit) if unit else b"")
    if gauge_body is not None:
        out += f_len(5, gauge_body)
    if sum_body is not None:
        out += f_len(7, sum_body)
    if histogram_body is not None:
        out += f_len(9, histogram_body)
    return out


def export_metrics_request(groups: Iterable[tuple[bytes, bytes, Iterable[bytes]]], schema_url: str = "") -> bytes:
    """ExportMetricsServiceRequest: resource_metrics 1 {resource 1, scope_metrics 2 {scope 1, metrics 2}}."""
    out = []
    for res, scp, metrics in groups:
        scope_metrics = f_len(1, scp) + b"".join(f_len(2, m) for m in metrics)
        if schema_url:
            scope_metrics += f_str(3, schema_url)
        out.append(f_len(1, f_len(1, res) + f_len(2, scope_metrics) + (f_str(3, schema_url) if schema_url else b"")))
    return b"".join(out)


# --- logs/v1 -----------------------------------------------------------------------------------

SEVERITY_INFO, SEVERITY_WARN, SEVERITY_ERROR = 9, 13, 17


def log_record(time_ns: int, severity_number: int, severity_text: str, body: str, attrs: bytes,
               event_name: str = "") -> bytes:
    """LogRecord: time 1, severity_number 2, severity_text 3, body 5, attributes 6, observed_time 11,
    event_name 12."""
    out = f_fixed64(1, time_ns) + f_varint(2, severity_number) + f_str(3, severity_text)
    out += f_len(5, any_value(body)) + attrs + f_fixed64(11, time_ns)
    if event_name:
        out += f_str(12, event_name)
    return out


def export_logs_request(groups: Iterable[tuple[bytes, bytes, Iterable[bytes]]]) -> bytes:
    """ExportLogsServiceRequest: resource_logs 1 {resource 1, scope_logs 2 {scope 1, log_records 2}}."""
    out = []
    for res, scp, records in groups:
        scope_logs = f_len(1, scp) + b"".join(f_len(2, r) for r in records)
        out.append(f_len(1, f_len(1, res) + f_len(2, scope_logs)))
    return b"".join(out)
