"""`otel-kafka-ebpf run` beside the four real clients, each producer and consumer in a container-like cgroup:
a `send` span for every produced batch and, in the same trace and under it, a `poll` span for every batch
each consumer group received, with the services, containers, client ids and groups the processes really have."""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from tests.testbed.agent_cli import AgentCLI
from tests.testbed.containers import FakeContainer
from tests.testbed.otlp import spans_in_file
from tests.workloads import CLIENTS, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

SEND, POLL = 4, 5
PROGRAM_SERVICE = {"java": "workload", "go": "workload", "confluent": "confluent_workload",
                   "kafkapython": "kafkapython_workload"}


def run_agent(out, *args: str) -> AgentCLI:
    return AgentCLI("run", "--exporter", "file", "--file-path", str(out), *args, ready="exporting")


def wait_for_spans(path, predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        spans = spans_in_file(path)
        if predicate(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def covering(spans, partition: int, offset: int):
    return [s for s in spans if s.partition == partition and s.first_offset <= offset <= s.last_offset]


@pytest.mark.parametrize("client", CLIENTS)
def test_send_and_poll_spans_of_every_batch_with_resources(kafka_broker, topic_factory, tmp_path, client):
    topic = topic_factory(partitions=3)
    out = tmp_path / "otlp.jsonl"
    bootstrap = kafka_broker.bootstrap
    common = dict(messages=150, partitions=3, size=100, linger_ms=5)
    with FakeContainer("docker") as orders_box, FakeContainer("k8s") as billing_box, \
            FakeContainer("docker") as audit_box:
        pod_name = f"{client}-billing-7d9f8b6c5d-x2k9p"
        with run_agent(out, "--kafka-port", str(kafka_broker.port), "--ports-only"):
            produced = run_workload(client, bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                                    client_id=f"{client}-orders", env={"OTEL_SERVICE_NAME": f"{client}-orders"},
                                    preexec_fn=orders_box.enter, **common)
            billing = run_workload(client, bootstrap, topic, tmp_path / "b.jsonl", mode="consume",
                                   group=f"{topic}-billing", client_id=f"{client}-billing",
                                   env={"HOSTNAME": pod_name, "KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                                   preexec_fn=billing_box.enter, **common)
            audit = run_workload(client, bootstrap, topic, tmp_path / "a.jsonl", mode="consume",
                                 group=f"{topic}-audit", client_id=f"{client}-audit", preexec_fn=audit_box.enter,
                                 **common)
            wanted = len(produced.consumed) + len(billing.consumed) + len(audit.consumed)
            spans = wait_for_spans(out, lambda s: sum(x.attributes["messaging.batch.message_count"]
                                                      for x in s if x.kind == POLL) >= wanted
                                   and sum(x.attributes["messaging.batch.message_count"] for x in s
                                           if x.kind == SEND) >= len(produced.produced))
    spans = [s for s in spans if s.attributes.get("messaging.destination.name") == topic]
    sends = [s for s in spans if s.kind == SEND]
    by_id = {(s.trace_id, s.span_id): s for s in sends}

    for p in produced.produced:
        (send,) = covering(sends, p.partition, p.offset)
        assert send.service == f"{client}-orders"
        assert send.resource["container.id"] == orders_box.container_id
        assert send.resource["process.pid"] == produced.pid
        assert send.attributes["messaging.client.id"] == p.client_id
        assert send.start_ns <= p.ack_ns
    assert sum(s.attributes["messaging.batch.message_count"] for s in sends) == len(produced.produced)

    for gt, box, service in ((billing, billing_box, f"{client}-billing"),
                             (audit, audit_box, PROGRAM_SERVICE[client])):
        polls = [s for s in spans if s.kind == POLL and s.resource.get("process.pid") == gt.pid]
        assert polls, f"no poll spans of {service}"
        for c in gt.consumed:
            (poll,) = covering(polls, c.partition, c.offset)
            send = by_id[(poll.trace_id, poll.parent_span_id)]  # the same trace, under the producer's span
            assert send.first_offset == poll.first_offset
            assert poll.attributes["messaging.consumer.group.name"] == c.group
            assert poll.attributes["messaging.client.id"] == c.client_id
        assert sum(s.attributes["messaging.batch.message_count"] for s in polls) == len(gt.consumed)
        resource = polls[0].resource
        assert resource["service.name"] == service and resource["container.id"] == box.container_id
        if box.pod_uid:
            assert resource["k8s.pod.uid"] == box.pod_uid and resource["k8s.pod.name"] == pod_name
    # no spans for the broker's own traffic, none for anything but these three processes
    assert {s.resource["process.pid"] for s in spans} == {produced.pid, billing.pid, audit.pid}


def test_two_agents_on_two_nodes_share_traces_also_after_a_restart(kafka_broker, topic_factory, tmp_path):
    """The producer's agent sees only the producer, the consumer's agent only the consumer (as on two nodes),
    each exporting on its own; the `poll` spans still hang under the `send` spans. Both agents then restart
    while the clients keep running (no Metadata from the clients for minutes): the link holds."""
    from tests.workloads import Workload

    topic = topic_factory(partitions=2)
    bootstrap = kafka_broker.bootstrap
    common = dict(messages=1200, partitions=2, size=100, rate=60, timeout_s=120)
    outputs = {phase: (tmp_path / f"producer-{phase}.jsonl", tmp_path / f"consumer-{phase}.jsonl")
               for phase in ("before", "after")}
    attached = {}  # phase -> (from, to): both agents attached
    with FakeContainer("docker") as pbox, FakeContainer("docker") as cbox:
        p_out, c_out = outputs["before"]
        with run_agent(p_out, "--cgroup", pbox.path), run_agent(c_out, "--cgroup", cbox.path):
            t0 = time.time_ns()
            # kafka-python names topics; the Java consumer's Fetch names them by id only
            producer = Workload("kafkapython", bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                                client_id="orders", env={"OTEL_SERVICE_NAME": "orders"}, preexec_fn=pbox.enter,
                                **common)
            consumer = Workload("java", bootstrap, topic, tmp_path / "c.jsonl", mode="consume", group=f"{topic}-g",
                                client_id="billing", env={"OTEL_SERVICE_NAME": "billing"}, preexec_fn=cbox.enter,
                                **common)
            time.sleep(8)
            attached["before"] = (t0, time.time_ns())
        p_out, c_out = outputs["after"]
        with run_agent(p_out, "--cgroup", pbox.path), run_agent(c_out, "--cgroup", cbox.path):
            t0 = time.time_ns()
            with producer, consumer:
                produced, consumed = producer.wait(), consumer.wait()
            time.sleep(2)
            attached["after"] = (t0, time.time_ns())
    sends = {}
    for phase in ("before", "after"):
        p_spans = spans_in_file(outputs[phase][0])
        assert p_spans and all(s.kind == SEND and s.service == "orders" for s in p_spans)
        sends.update({(s.trace_id, s.span_id): s for s in p_spans})
    sent_at = {(p.partition, p.offset): p.send_ns for p in produced.produced}
    margin = 300_000_000  # a batch in flight as an agent attaches or detaches may be seen by one side only
    for phase in ("before", "after"):
        lo, hi = attached[phase]
        polls = spans_in_file(outputs[phase][1])
        assert polls and all(s.kind == POLL and s.service == "billing" for s in polls)
        must_link = [p for p in polls if lo + margin < sent_at[(p.partition, p.first_offset)] < hi - margin]
        assert len(must_link) >= 10, (phase, len(polls))
        for p in must_link:
            send = sends.get((p.trace_id, p.parent_span_id))
            assert send is not None, (phase, p.partition, p.first_offset)
            assert (send.topic, send.partition, send.first_offset) == (p.topic, p.partition, p.first_offset)
    assert consumed.consumed
