"""Every pipeline in collector-config/ runs in a real Collector and delivers to real backends.

A producer service sends a PRODUCER span, a consumer service a CONSUMER span under it (the shape
of the agent's send and poll spans), a histogram, a gauge and a log record, with the OpenTelemetry
SDK over OTLP gRPC. Then Jaeger must hold the trace (both spans, the parent, the services),
Prometheus the metrics and the span metrics of both services, Jaeger's dependencies the edge
producer -> consumer; or the files / the debug log must hold all of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.testbed.backends import (
    COLLECTOR_CONFIG_DIR,
    ROOT,
    port_open,
    validate_collector_config,
    wait_until,
)
from tests.testbed.kafka import free_port

pytestmark = pytest.mark.integration

K8S_DIR = COLLECTOR_CONFIG_DIR / "k8s"
TOPIC = "orders"
# What the Collector's prometheus exporter makes of the test instruments' names and units.
HISTOGRAM, HISTOGRAM_PROM = "oke.test.latency", "oke_test_latency_seconds"
GAUGE, GAUGE_PROM = "oke.test.lag", "oke_test_lag"
SPAN_CALLS = "traces_span_metrics_calls_total"


class Sent:
    """What send_telemetry() sent: ids in hex, the two service names, the log line."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.producer = f"oke-test-producer-{run}"
        self.consumer = f"oke-test-consumer-{run}"
        self.log_body = f"capture started (test {run})"
        self.trace_id = self.send_span_id = self.poll_span_id = ""


def send_telemetry(grpc_address: str) -> Sent:
    """Traces, metrics and a log record to an OTLP gRPC receiver at host:port, flushed."""
    sent = Sent()

    def provider(service: str) -> TracerProvider:
        tp = TracerProvider(resource=Resource.create({"service.name": service}))
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=grpc_address, insecure=True)))
        return tp

    producer_tp, consumer_tp = provider(sent.producer), provider(sent.consumer)
    attrs = {"messaging.system": "kafka", "messaging.destination.name": TOPIC}
    with producer_tp.get_tracer("oke-test").start_as_current_span(
            f"send {TOPIC}", kind=trace.SpanKind.PRODUCER,
            attributes={**attrs, "messaging.operation.type": "send"}) as send:
        ctx = send.get_span_context()
    parent = trace.set_span_in_context(trace.NonRecordingSpan(ctx))
    with consumer_tp.get_tracer("oke-test").start_as_current_span(
            f"poll {TOPIC}", context=parent, kind=trace.SpanKind.CONSUMER,
            attributes={**attrs, "messaging.operation.type": "receive",
                        "messaging.consumer.group.name": "billing"}) as poll:
        sent.poll_span_id = f"{poll.get_span_context().span_id:016x}"
    sent.trace_id, sent.send_span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    for tp in (producer_tp, consumer_tp):
        tp.shutdown()

    resource = Resource.create({"service.name": sent.producer})
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=grpc_address, insecure=True),
                                           export_interval_millis=3_600_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    meter = mp.get_meter("oke-test")
    latency = meter.create_histogram(HISTOGRAM, unit="s", description="test latency",
                                     explicit_bucket_boundaries_advisory=[0.005, 0.025, 0.1, 1.0])
    for v in (0.004, 0.020, 0.3):
        latency.record(v, {"messaging.destination.name": TOPIC})
    meter.create_gauge(GAUGE, unit="{message}", description="test lag").set(42, {"messaging.destination.name": TOPIC})
    mp.force_flush()
    mp.shutdown()

    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=grpc_address, insecure=True)))
    lp.get_logger("oke-test").emit(body=sent.log_body, severity_number=SeverityNumber.WARN,
                                   severity_text="WARN", attributes={"oke.status": "capturing"})
    lp.shutdown()
    return sent


# --------------------------------------------------------------------------- assertions

def assert_trace_in_jaeger(jaeger, sent: Sent) -> None:
    got = jaeger.wait_for_trace(sent.trace_id, spans=2)
    spans = {s["span_id"]: s for s in got["spans"]}
    assert set(spans) == {sent.send_span_id, sent.poll_span_id}, got
    send, poll = spans[sent.send_span_id], spans[sent.poll_span_id]
    assert (send["service"], send["kind"], send["operation"]) == (sent.producer, "producer", f"send {TOPIC}")
    assert (poll["service"], poll["kind"], poll["operation"]) == (sent.consumer, "consumer", f"poll {TOPIC}")
    assert send["parent_span_id"] is None
    assert poll["parent_span_id"] == sent.send_span_id
    assert {"ref_type": "CHILD_OF", "trace_id": sent.trace_id, "span_id": sent.send_span_id} in poll["references"]
    assert poll["tags"]["messaging.destination.name"] == TOPIC
    assert send["process_tags"].get("telemetry.sdk.language") == "python"
    assert got["services"] == sorted([sent.producer, sent.consumer])
    # the search API and the service/operation lists see them too
    assert sent.producer in jaeger.services() and sent.consumer in jaeger.services()
    assert {"name": f"send {TOPIC}", "span_kind": "producer"} in jaeger.operations(sent.producer)
    found = jaeger.traces(sent.consumer, lookback=600, limit=5)
    assert [t["trace_id"] for t in found] == [sent.trace_id]


def assert_metrics_in_prometheus(prometheus, sent: Sent) -> None:
    def expect(promql: str, value: float) -> None:
        # a new span-metrics series starts at 0 (so rate() counts its first call): wait for the value
        last = []

        def probe():
            last[:] = prometheus.query(promql)
            return len(last) == 1 and last[0][1] == value
        try:
            wait_until(probe, timeout=30, what=f"{promql} == {value}")
        except Exception as e:
            names = [n for n in prometheus.metric_names() if "oke" in n or "span" in n]
            raise AssertionError(f"{e}; last result {last}; metric names seen: {names}; "
                                 f"targets: {prometheus.targets()}") from None

    job = f'job="{sent.producer}"'
    expect(f"{HISTOGRAM_PROM}_count{{{job}}}", 3)
    expect(f'{HISTOGRAM_PROM}_bucket{{{job},le="0.025"}}', 2)
    expect(f'{GAUGE_PROM}{{{job},messaging_destination_name="{TOPIC}"}}', 42)
    # span metrics: one call per service, with its kind and topic / consumer group
    expect(f'{SPAN_CALLS}{{service_name="{sent.producer}",span_kind="SPAN_KIND_PRODUCER",'
           f'messaging_destination_name="{TOPIC}"}}', 1)
    expect(f'{SPAN_CALLS}{{service_name="{sent.consumer}",span_kind="SPAN_KIND_CONSUMER",'
           f'messaging_consumer_group_name="billing"}}', 1)
    # the resource is kept as target_info (job = service.name)
    expect(f"target_info{{{job}}}", 1)


def assert_service_edge(jaeger, sent: Sent) -> None:
    def edge():
        return [d for d in jaeger.dependencies(lookback=600)
                if (d["parent"], d["child"]) == (sent.producer, sent.consumer)]
    assert wait_until(edge, timeout=10, what="the producer -> consumer edge")[0]["call_count"] == 1


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def logged_bodies(export_file: Path) -> list[str]:
    return [rec.get("body", {}).get("stringValue")
            for req in read_jsonl(export_file) for rl in req.get("resourceLogs", [])
            for sl in rl.get("scopeLogs", []) for rec in sl.get("logRecords", [])]


# --------------------------------------------------------------------------- pipelines

def test_agent_gateway_pipeline(otel_backends):
    """agent-gateway.yaml: traces to Jaeger, metrics and span metrics to Prometheus, logs to file and log."""
    sent = send_telemetry(otel_backends.collector.otlp_grpc_address)
    assert_trace_in_jaeger(otel_backends.jaeger, sent)
    assert_service_edge(otel_backends.jaeger, sent)
    assert_metrics_in_prometheus(otel_backends.prometheus, sent)
    collector = otel_backends.collector
    wait_until(lambda: sent.log_body in logged_bodies(collector.export_dir / "logs.jsonl"), timeout=10,
               what=f"the log record in {collector.export_dir / 'logs.jsonl'}")
    assert sent.log_body in collector.logs(400), "debug exporter did not print the log record"


def test_node_forwarder_pipeline(otel_backends, collector_factory):
    """node-forwarder.yaml (the DaemonSet's Collector) forwards all three signals to the gateway."""
    gateway = otel_backends.collector
    forwarder = collector_factory("node-forwarder.yaml",
                                  env={"OTLP_UPSTREAM_ENDPOINT": gateway.otlp_grpc_address})
    sent = send_telemetry(forwarder.otlp_grpc_address)
    assert_trace_in_jaeger(otel_backends.jaeger, sent)
    assert_metrics_in_prometheus(otel_backends.prometheus, sent)
    wait_until(lambda: sent.log_body in logged_bodies(gateway.export_dir / "logs.jsonl"), timeout=10,
               what="the forwarded log record at the gateway")


def test_file_only_pipeline(collector_factory):
    collector = collector_factory("file-only.yaml")
    sent = send_telemetry(collector.otlp_grpc_address)
    out = collector.export_dir

    def spans():
        return {s["spanId"]: s for req in read_jsonl(out / "traces.jsonl") for rs in req["resourceSpans"]
                for ss in rs["scopeSpans"] for s in ss["spans"]}
    got = wait_until(lambda: (s := spans()) and len(s) == 2 and s, timeout=10, what="2 spans in traces.jsonl")
    assert got[sent.poll_span_id]["parentSpanId"] == sent.send_span_id
    assert {s["traceId"] for s in got.values()} == {sent.trace_id}
    assert got[sent.send_span_id]["kind"] == 4 and got[sent.poll_span_id]["kind"] == 5  # PRODUCER, CONSUMER

    def metric_names():
        return {m["name"] for req in read_jsonl(out / "metrics.jsonl") for rm in req["resourceMetrics"]
                for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    wait_until(lambda: {HISTOGRAM, GAUGE} <= metric_names(), timeout=10, what="metrics in metrics.jsonl")
    wait_until(lambda: sent.log_body in logged_bodies(out / "logs.jsonl"), timeout=10, what="the log record")


def test_debug_pipeline(collector_factory):
    collector = collector_factory("debug.yaml")
    sent = send_telemetry(collector.otlp_grpc_address)
    wanted = [sent.trace_id, sent.send_span_id, f"send {TOPIC}", f"poll {TOPIC}", "Producer", "Consumer",
              sent.producer, sent.consumer, HISTOGRAM, GAUGE, sent.log_body]
    wait_until(lambda: all(w in collector.logs(2000) for w in wanted), timeout=10,
               what=f"all of {wanted} in the debug output\n{collector.logs(80)}")


def test_collector_restarts_on_the_same_ports(collector_factory):
    """The agent's Collector can be stopped and brought back: same addresses, data flows again."""
    collector = collector_factory("file-only.yaml")
    ports = dict(collector.ports)
    collector.kill()
    assert not collector.running
    collector.start()
    assert collector.ports == ports
    sent = send_telemetry(collector.otlp_grpc_address)
    wait_until(lambda: sent.log_body in logged_bodies(collector.export_dir / "logs.jsonl"), timeout=10,
               what="a log record after the restart")


def test_otel_backends_collector_down(otel_backends):
    """The agent's Collector gone for a while: its port closes, then it is back where it was."""
    address = otel_backends.collector.otlp_grpc_address
    port = int(address.rsplit(":", 1)[1])
    with otel_backends.collector_down(kill=True):
        assert not port_open(port)
    assert otel_backends.collector.otlp_grpc_address == address
    sent = send_telemetry(address)
    assert_trace_in_jaeger(otel_backends.jaeger, sent)


def test_backends_command_line(tmp_path):
    """`make backends-up` / `backends-status` / `backends-down` (python -m tests.testbed.backends)."""
    ports = {"--otlp-grpc-port": free_port(), "--otlp-http-port": free_port(),
             "--jaeger-port": free_port(), "--prometheus-port": free_port()}

    def cli(cmd: str) -> subprocess.CompletedProcess:
        args = [str(a) for kv in ports.items() for a in kv] if cmd == "up" else \
               ["--otlp-grpc-port", str(ports["--otlp-grpc-port"])]
        return subprocess.run([sys.executable, "-m", "tests.testbed.backends", cmd, *args,
                               "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                              cwd=ROOT)
    up = cli("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{ports['--otlp-grpc-port']}" in up.stdout
        assert f"http://127.0.0.1:{ports['--jaeger-port']}/api/services" in up.stdout
        status = cli("status")
        assert status.returncode == 0 and status.stdout.count("answers") == 3, status.stdout
        pids = json.loads((tmp_path / "backends.json").read_text())["pids"]
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert cli("status").returncode == 1


# --------------------------------------------------------------------------- files

TESTED_PIPELINES = {"agent-gateway.yaml", "node-forwarder.yaml", "file-only.yaml", "debug.yaml"}


def test_every_pipeline_is_tested_and_valid():
    files = {p.name for p in COLLECTOR_CONFIG_DIR.glob("*.yaml")}
    assert files == TESTED_PIPELINES, "a pipeline in collector-config/ needs a test above"
    for name in sorted(files):
        validate_collector_config(name)


def _k8s(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((K8S_DIR / name).read_text()) if doc}


def _containers(workload: dict) -> dict[str, dict]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def _mounts(container: dict) -> dict[str, bool]:
    return {m["mountPath"]: m.get("readOnly", False) for m in container.get("volumeMounts", [])}


def _agent_settings(container: dict) -> dict:
    """The settings `otel-kafka-ebpf settings` reads from the container's environment (downward API
    fields stood in for), so a manifest's variables are checked against what the agent understands."""
    stand_ins = {"spec.nodeName": "node-7", "metadata.uid": "0f1e2d3c-0000-4000-8000-000000000001",
                 "metadata.name": "orders-consumer-5d9f-x2k9p", "metadata.namespace": "shop",
                 "status.podIP": "10.1.2.3"}
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = stand_ins[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
    res = subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", "settings"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={"PATH": os.environ["PATH"], **env})
    assert res.returncode == 0, res.stderr
    return tomllib.loads(res.stdout)


def test_daemonset_manifest(tmp_path):
    docs = _k8s("daemonset.yaml")
    assert set(docs) == {"Namespace", "ConfigMap", "DaemonSet"}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    agent, collector = _containers(docs["DaemonSet"])["agent"], _containers(docs["DaemonSet"])["collector"]
    assert agent["args"] == ["run"]
    settings = _agent_settings(agent)
    assert settings["exporter"]["endpoint"] == "http://localhost:4317"  # the collector container
    assert settings["agent"]["host_name"] == "node-7"
    assert settings["agent"]["resource_attributes"] == {"k8s.node.name": "node-7"}
    sec = agent["securityContext"]
    assert not sec["privileged"] and sec["capabilities"]["drop"] == ["ALL"]
    assert set(sec["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}
    assert _mounts(agent) | {"/tmp": False} == {"/sys/kernel/btf": True, "/sys/fs/cgroup": True, "/tmp": False}
    for c in (agent, collector):
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    # the Collector's config is node-forwarder.yaml, and the Collector takes it as the pod sets it up
    config = docs["ConfigMap"]["data"]["collector.yaml"]
    assert yaml.safe_load(config) == yaml.safe_load((COLLECTOR_CONFIG_DIR / "node-forwarder.yaml").read_text())
    assert collector["args"] == ["--config=/conf/collector.yaml"]
    (tmp_path / "collector.yaml").write_text(config)
    pod_env = {e["name"]: e["value"].replace("$(POD_IP)", "127.0.0.1") for e in collector["env"] if "value" in e}
    validate_collector_config(tmp_path / "collector.yaml", env=pod_env)


def test_sidecar_manifest():
    docs = _k8s("sidecar.yaml")
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True  # the agent names processes by the host pids the kernel reports
    agent = _containers(docs["Deployment"])["otel-kafka-ebpf"]
    assert set(agent["securityContext"]["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE",
                                                                    "DAC_READ_SEARCH"}
    assert _mounts(agent)["/sys/fs/cgroup"] is True and _mounts(agent)["/sys/kernel/btf"] is True
    assert 'export OKE_CAPTURE_CGROUP="$cg"' in agent["args"][0]
    settings = _agent_settings(agent)
    assert settings["exporter"]["endpoint"].endswith(".svc.cluster.local:4317")
    assert settings["agent"]["resource_attributes"]["k8s.pod.name"] == "orders-consumer-5d9f-x2k9p"
    assert settings["agent"]["service_name"] == "otel-kafka-ebpf"  # the app's name is the app's own


@pytest.mark.parametrize("layout", [
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice",   # systemd driver
    "kubepods.slice/kubepods-pod{u}.slice",                                      # systemd, Guaranteed
    "kubepods/besteffort/pod{uid}",                                              # cgroupfs driver
])
def test_sidecar_finds_its_pod_cgroup(tmp_path, layout):
    """The sidecar's start script finds the pod's cgroup directory from the pod UID."""
    script = _containers(_k8s("sidecar.yaml")["Deployment"])["otel-kafka-ebpf"]["args"][0]
    uid = str(uuid.uuid4())
    root = tmp_path / "cgroup"
    pod_dir = root / layout.format(u=uid.replace("-", "_"), uid=uid)
    (pod_dir / "cri-containerd-abc.scope").mkdir(parents=True)
    (root / "kubepods.slice" / "kubepods-burstable.slice" / "kubepods-burstable-podother.slice").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "otel-kafka-ebpf"
    fake.write_text('#!/bin/sh\necho "$OKE_CAPTURE_CGROUP $*"\n')
    fake.chmod(0o755)
    res = subprocess.run(["/bin/sh", "-c", script.replace("/sys/fs/cgroup", str(root))],
                         env={**os.environ, "POD_UID": uid, "PATH": f"{bindir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(pod_dir), "run"]
