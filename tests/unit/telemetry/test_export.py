"""The exporter's queue: never blocks the pipeline, drops the oldest when full, counts, warns once a minute,
recovers; OTLP/JSON of the file exporter; endpoints and settings from the standard variables."""

from __future__ import annotations

import json
import threading
import time

import pytest

from otel_kafka_ebpf.config import ConfigError, load_config
from otel_kafka_ebpf.sinks.export import ExportError, Exporter, FileTransport, GrpcTransport, HttpTransport
from otel_kafka_ebpf.sinks import otlp_wire as wire
from otel_kafka_ebpf.sinks.resources import SCOPE
from tests.testbed.otlp import read_json_lines, spans_of


class FlakyTransport:
    """Fails (retryably) while `down` is set; records what it accepted."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.accepted: list[bytes] = []

    def describe(self) -> str:
        return "flaky:4317"

    def send(self, signal, payload, timeout):
        if self.down.is_set():
            raise ExportError("UNAVAILABLE: connection refused", True)
        self.accepted.append(payload)
        return 0

    def close(self):
        pass


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_backend_that_is_down_costs_drops_not_time_and_recovers():
    transport = FlakyTransport()
    transport.down.set()
    warnings = []
    exporter = Exporter(transport, max_items={"traces": 100}, warn=warnings.append)
    t0 = time.monotonic()
    for i in range(50):
        assert exporter.submit("traces", f"r{i}".encode(), 10) in (True, False)
    assert time.monotonic() - t0 < 0.5  # submit never waits for the backend
    wait_until(lambda: warnings)
    assert exporter.dropped["traces"] == 400 and exporter.queued["traces"] == 100  # the oldest went first
    assert len(warnings) == 1 and "flaky:4317" in warnings[0] and "retrying" in warnings[0]
    transport.down.clear()
    wait_until(lambda: exporter.queued["traces"] == 0)
    assert transport.accepted == [f"r{i}".encode() for i in range(40, 50)]  # the freshest were kept
    assert exporter.exported["traces"] == 100 and "again" in warnings[-1]
    exporter.shutdown(2)


def test_shutdown_counts_what_it_could_not_send():
    transport = FlakyTransport()
    transport.down.set()
    exporter = Exporter(transport, warn=lambda m: None)
    exporter.submit("traces", b"x", 7)
    exporter.shutdown(0.3)
    assert exporter.dropped["traces"] == 7 and exporter.queued["traces"] == 0


def test_file_exporter_writes_otlp_json_lines_with_hex_ids(tmp_path):
    span = wire.span(bytes(range(16)), bytes(range(8)), None, wire.span_name("send t"),
                     wire.span_kind(wire.SPAN_KIND_PRODUCER), 1, 2, wire.span_attributes([("a", 1)]))
    payload = wire.export_trace_request([(wire.resource({"service.name": "s"}), SCOPE, [span])])
    path = tmp_path / "out.jsonl"
    t = FileTransport(str(path))
    t.send("traces", payload, 1)
    t.send("traces", payload, 1)
    t.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and (path.stat().st_mode & 0o777) == 0o600
    obj = json.loads(lines[0])
    s = obj["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert s["traceId"] == bytes(range(16)).hex() and s["spanId"] == bytes(range(8)).hex() and s["kind"] == 4
    (back,) = spans_of(read_json_lines(path)["traces"][:1])
    assert back.trace_id == bytes(range(16)).hex() and back.attributes == {"a": 1}


def test_endpoints_from_the_standard_variables():
    cfg = load_config(None, None, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}).exporter
    assert GrpcTransport(cfg).target == "collector:4317"
    cfg = load_config(None, None, environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                                           "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9/x"}).exporter
    assert cfg.type == "otlp-http"
    http = HttpTransport(cfg)
    assert http.urls == {"traces": "http://collector:4318/v1/traces", "metrics": "http://m:9/x",
                         "logs": "http://collector:4318/v1/logs"}
    cfg = load_config(None, None, environ={"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20x",
                                           "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                                           "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}).exporter
    assert cfg.headers == {"Authorization": "Bearer x"} and cfg.timeout_s == 2.5 and cfg.compression == "gzip"
    assert GrpcTransport(cfg).metadata == (("authorization", "Bearer x"),)


@pytest.mark.parametrize("environ, message", [
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5", "OTEL_TRACES_SAMPLER": "traceidratio"}, "between 0 and 1"),
    ({"OTEL_TRACES_SAMPLER": "xray"}, "unknown sampler"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://host:notaport"}, "not a valid port"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent.pem"}, "no such file"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTLP protocols: grpc, http/protobuf"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "is not key=value"),
])
def test_bad_settings_are_one_line_naming_the_variable(environ, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, None, environ=environ)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert next(iter(environ)) in text or list(environ)[-1] in text
