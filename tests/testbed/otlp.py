"""What the agent exported, read back: OTLP requests (protobuf bytes or OTLP/JSON lines) -> plain spans.

Used by unit tests (an in-memory transport), by integration tests (the agent's `--exporter file`
output, or a Collector's file exporter) and by benchmarks.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from google.protobuf import json_format

_REQUESTS = {"traces": ExportTraceServiceRequest, "metrics": ExportMetricsServiceRequest,
             "logs": ExportLogsServiceRequest}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict
    resource: dict
    links: list[tuple[str, str]] = field(default_factory=list)
    status_code: int = 0
    flags: int = 0

    @property
    def first_offset(self) -> int | None:
        return self.attributes.get("messaging.kafka.offset")

    @property
    def last_offset(self) -> int | None:
        return self.attributes.get("otel_kafka_ebpf.batch.last_offset")

    @property
    def partition(self) -> int:
        return int(self.attributes["messaging.destination.partition.id"])

    @property
    def topic(self) -> str:
        return self.attributes["messaging.destination.name"]

    @property
    def service(self) -> str:
        return self.resource.get("service.name", "")


def _value(v) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class InMemoryTransport:
    """A transport for the agent's Exporter that keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    def describe(self) -> str:
        return "memory"

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        self.requests.append((signal, payload))
        return 0

    def close(self) -> None:
        pass

    def spans(self) -> list[Span]:
        return spans_of(ExportTraceServiceRequest.FromString(p) for s, p in self.requests if s == "traces")

    def metrics(self) -> list[ExportMetricsServiceRequest]:
        return [ExportMetricsServiceRequest.FromString(p) for s, p in self.requests if s == "metrics"]

    def logs(self) -> list[ExportLogsServiceRequest]:
        return [ExportLogsServiceRequest.FromString(p) for s, p in self.requests if s == "logs"]


_ITEMS = {"traces": ("resource_spans", "scope_spans", "spans"),
          "logs": ("resource_logs", "scope_logs", "log_records"),
          "metrics": ("resource_metrics", "scope_metrics", "metrics")}


def _items(requests: Iterable, signal: str):
    """(resource attributes, item) for every span, log record or metric of the requests."""
    per_resource, per_scope, items = _ITEMS[signal]
    for req in requests:
        for r in getattr(req, per_resource):
            resource = _attrs(r.resource.attributes)
            for scope in getattr(r, per_scope):
                for item in getattr(scope, items):
                    yield resource, item


def spans_of(requests: Iterable[ExportTraceServiceRequest]) -> list[Span]:
    out = []
    for resource, s in _items(requests, "traces"):
        out.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                        s.start_time_unix_nano, s.end_time_unix_nano, _attrs(s.attributes), resource,
                        [(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links], s.status.code, s.flags))
    return out


def _from_json(line: str, signal: str):
    """An OTLP/JSON request (ids in hex, as OTLP/JSON has them) as a protobuf message."""
    obj = json.loads(line)

    def ids_to_b64(node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode()
                else:
                    ids_to_b64(v)
        elif isinstance(node, list):
            for x in node:
                ids_to_b64(x)

    ids_to_b64(obj)
    return json_format.ParseDict(obj, _REQUESTS[signal](), ignore_unknown_fields=True)


def parse_json_line(line: str):
    """One OTLP/JSON request (a line of a file exporter's output) -> (signal, protobuf request);
    None for a blank line or one that is no known request."""
    if not line.strip():
        return None
    obj = json.loads(line)
    signal = ("traces" if "resourceSpans" in obj else "metrics" if "resourceMetrics" in obj
              else "logs" if "resourceLogs" in obj else None)
    return (signal, _from_json(line, signal)) if signal else None


def read_json_lines(path: str | Path) -> dict[str, list]:
    """The requests of an OTLP/JSON-lines file (the agent's or the Collector's file exporter), by signal."""
    out: dict[str, list] = {"traces": [], "metrics": [], "logs": []}
    text = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    for line in text.splitlines():
        parsed = parse_json_line(line)
        if parsed:
            out[parsed[0]].append(parsed[1])
    return out


@dataclass
class LogRecord:
    event_name: str
    time_ns: int          # the record's time, else its observed time
    attributes: dict
    resource: dict
    body: object = None


def log_records_of(requests: Iterable[ExportLogsServiceRequest]) -> list[LogRecord]:
    out = []
    for resource, r in _items(requests, "logs"):
        attrs = _attrs(r.attributes)
        out.append(LogRecord(r.event_name or str(attrs.get("event.name", "")),
                             r.time_unix_nano or r.observed_time_unix_nano, attrs, resource,
                             _value(r.body) if r.HasField("body") else None))
    return out


@dataclass
class MetricPoint:
    name: str
    time_ns: int
    value: float
    attributes: dict
    resource: dict


def number_points_of(requests: Iterable[ExportMetricsServiceRequest]) -> list[MetricPoint]:
    """Every data point of every gauge and sum."""
    out = []
    for resource, m in _items(requests, "metrics"):
        kind = m.WhichOneof("data")
        if kind in ("gauge", "sum"):
            for dp in getattr(m, kind).data_points:
                value = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                out.append(MetricPoint(m.name, dp.time_unix_nano, value, _attrs(dp.attributes), resource))
    return out


def spans_in_file(path: str | Path) -> list[Span]:
    return spans_of(read_json_lines(path)["traces"])
