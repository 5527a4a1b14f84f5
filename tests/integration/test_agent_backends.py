"""The real agent into the real backends: `otel-kafka-ebpf run` exporting OTLP to a Collector running
collector-config/agent-gateway.yaml, which feeds Jaeger and Prometheus. A producer service and a
consumer service show up in Jaeger as one trace per batch (the consumer's `poll` under the
producer's `send`), as the edge producer -> consumer in Jaeger's dependencies, and in Prometheus
with their span metrics and the agent's own message counts."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.testbed.agent_cli import AgentCLI
from tests.testbed.backends import wait_until
from tests.workloads import run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

MESSAGES = 60


def test_agent_spans_and_metrics_reach_jaeger_and_prometheus(otel_backends, kafka_broker, topic_factory,
                                                             tmp_path):
    topic = topic_factory(partitions=1)
    run = uuid.uuid4().hex[:6]
    producer, consumer = f"orders-{run}", f"billing-{run}"
    common = dict(messages=MESSAGES, partitions=1, size=100, linger_ms=5)
    jaeger, prometheus = otel_backends.jaeger, otel_backends.prometheus
    with AgentCLI("run", "--kafka-port", str(kafka_broker.port), "--ports-only", ready="exporting",
                  env=otel_backends.agent_env()):
        run_workload("kafkapython", kafka_broker.bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                     env={"OTEL_SERVICE_NAME": producer}, **common)
        run_workload("kafkapython", kafka_broker.bootstrap, topic, tmp_path / "c.jsonl", mode="consume",
                     group=f"{topic}-billing", env={"OTEL_SERVICE_NAME": consumer}, **common)
        linked = wait_until(
            lambda: [t for t in jaeger.traces(consumer, lookback=600, limit=100) if producer in t["services"]],
            timeout=30, what=f"a trace with {producer} and {consumer} in Jaeger")

    trace = jaeger.trace(linked[0]["trace_id"])
    sends = {s["span_id"]: s for s in trace["spans"] if s["kind"] == "producer"}
    polls = [s for s in trace["spans"] if s["kind"] == "consumer"]
    assert sends and polls, trace
    for poll in polls:
        send = sends[poll["parent_span_id"]]
        assert (send["service"], send["operation"]) == (producer, f"send {topic}")
        assert (poll["service"], poll["operation"]) == (consumer, f"poll {topic}")
        assert poll["tags"]["messaging.consumer.group.name"] == f"{topic}-billing"

    edge = wait_until(lambda: [d for d in jaeger.dependencies(lookback=600)
                               if (d["parent"], d["child"]) == (producer, consumer)],
                      timeout=10, what="the edge producer -> consumer")
    assert edge[0]["call_count"] >= 1

    for service, kind in ((producer, "PRODUCER"), (consumer, "CONSUMER")):
        prometheus.wait_for(f'traces_span_metrics_calls_total{{service_name="{service}",'
                            f'span_kind="SPAN_KIND_{kind}",messaging_destination_name="{topic}"}} > 0')
    # the agent's own count of what the producer sent, every message
    prometheus.wait_for(f'sum(messaging_client_sent_messages_total{{job="{producer}"}}) == {MESSAGES}')
