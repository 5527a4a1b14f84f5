"""`otel-kafka-ebpf run` beside the four real clients, each producer and consumer in a container-like cgroup:
a `send` span for every produced batch and, in the same trace and under it, a `poll` span for every batch
each consumer group received, with the services, containers, client ids and groups the processes really have."""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

from tests.testbed.agent_cli import AgentCLI
from tests.testbed.backends import wait_until
from tests.testbed.containers import FakeContainer
from tests.testbed.otlp import Span, spans_in_file
from tests.workloads import CLIENTS, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

SEND, POLL = 4, 5
PROGRAM_SERVICE = {"java": "workload", "go": "workload", "confluent": "confluent_workload",
                   "kafkapython": "kafkapython_workload"}


def run_agent(out, *args: str) -> AgentCLI:
    return AgentCLI("run", "--exporter", "file", "--file-path", str(out), *args, ready="exporting")


def jaeger_spans(jaeger, service: str) -> list[Span]:
    """Every span of every trace Jaeger holds with a span of `service` (the last 10 minutes)."""
    spans = []
    for trace in jaeger.traces(service, lookback=600, limit=10_000):
        for s in trace["spans"]:
            resource = dict(s["process_tags"], **{"service.name": s["service"]})
            spans.append(Span(s["trace_id"], s["span_id"], s["parent_span_id"] or "", s["operation"],
                              {"producer": SEND, "consumer": POLL}.get(s["kind"], 0), s["start_us"] * 1000,
                              (s["start_us"] + s["duration_us"]) * 1000, s["tags"], resource))
    return spans


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
def test_send_and_poll_spans_of_every_batch_with_resources(otel_backends, kafka_broker, topic_factory, tmp_path,
                                                           client):
    """Through a real Collector (collector-config/agent-gateway.yaml) into Jaeger, read back from its query API."""
    topic = topic_factory(partitions=3)
    bootstrap = kafka_broker.bootstrap
    common = dict(messages=150, partitions=3, size=100, linger_ms=5)
    run = topic[-8:]
    producer_service = f"{client}-orders-{run}"
    with FakeContainer("docker") as orders_box, FakeContainer("k8s") as billing_box, \
            FakeContainer("docker") as audit_box:
        pod_name = f"{client}-billing-7d9f8b6c5d-x2k9p"
        with AgentCLI("run", "--kafka-port", str(kafka_broker.port), "--ports-only", ready="exporting",
                      env=otel_backends.agent_env()):
            produced = run_workload(client, bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                                    client_id=f"{client}-orders", env={"OTEL_SERVICE_NAME": producer_service},
                                    preexec_fn=orders_box.enter, **common)
            billing = run_workload(client, bootstrap, topic, tmp_path / "b.jsonl", mode="consume",
                                   group=f"{topic}-billing", client_id=f"{client}-billing",
                                   env={"HOSTNAME": pod_name, "KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                                   preexec_fn=billing_box.enter, **common)
            audit = run_workload(client, bootstrap, topic, tmp_path / "a.jsonl", mode="consume",
                                 group=f"{topic}-audit", client_id=f"{client}-audit", preexec_fn=audit_box.enter,
                                 **common)
            wanted = len(billing.consumed) + len(audit.consumed)

            def complete():
                got = jaeger_spans(otel_backends.jaeger, producer_service)
                polls = sum(x.attributes["messaging.batch.message_count"] for x in got if x.kind == POLL)
                sends = sum(x.attributes["messaging.batch.message_count"] for x in got if x.kind == SEND)
                return got if polls >= wanted and sends >= len(produced.produced) else None

            spans = wait_until(complete, timeout=30, what="every batch's spans in Jaeger")
    spans = [s for s in spans if s.attributes.get("messaging.destination.name") == topic]
    sends = [s for s in spans if s.kind == SEND]
    by_id = {(s.trace_id, s.span_id): s for s in sends}

    for p in produced.produced:
        (send,) = covering(sends, p.partition, p.offset)
        assert send.service == producer_service
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
    assert {s.resource["host.name"] for s in spans} == {os.uname().nodename}


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


def test_replay_of_the_recording_exports_the_same_spans(kafka_broker, topic_factory, tmp_path):
    """`run --record` keeps what it captured (and the process identities it read); `replay --exporter file`
    of that recording gives the same spans, ids, times, attributes and resources included."""
    topic = topic_factory(partitions=2)
    live_out, replay_out, recording = tmp_path / "live.jsonl", tmp_path / "replay.jsonl", tmp_path / "cap.okr"
    with run_agent(live_out, "--kafka-port", str(kafka_broker.port), "--ports-only", "--record", str(recording)):
        run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "g.jsonl", messages=200, partitions=2,
                     env={"OTEL_SERVICE_NAME": "replayed"})
        time.sleep(1.5)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", "replay", str(recording), "--exporter", "file",
                        "--file-path", str(replay_out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr

    def key(s):
        return (s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.end_ns,
                sorted(s.attributes.items()), sorted((k, str(v)) for k, v in s.resource.items()), s.links)

    live = sorted(key(s) for s in spans_in_file(live_out) if s.attributes["messaging.destination.name"] == topic)
    replayed = sorted(key(s) for s in spans_in_file(replay_out)
                      if s.attributes["messaging.destination.name"] == topic)
    assert live and live == replayed
    assert {dict(k[8])["service.name"] for k in live} == {"replayed"}


def test_a_collector_down_for_30_s_costs_counted_drops_not_the_capture(otel_backends, kafka_broker, topic_factory,
                                                                     tmp_path):
    """The Collector is killed mid-run for 30 s: the agent keeps capturing, keeps what its queue holds, counts
    and reports what it dropped (one warning line), and exports again once the Collector is back."""
    topic = topic_factory(partitions=1)
    service = f"through-outage-{topic[-8:]}"
    env = dict(otel_backends.agent_env(), OKE_EXPORTER_MAX_QUEUE_SPANS="40", OTEL_EXPORTER_OTLP_TIMEOUT="2000")
    from tests.workloads import Workload
    with AgentCLI("run", "--kafka-port", str(kafka_broker.port), "--ports-only", "--status-interval", "5",
                  ready="exporting", env=env) as agent:
        with Workload("go", kafka_broker.bootstrap, topic, tmp_path / "g.jsonl", mode="produce", messages=1500,
                      rate=40, linger_ms=0, partitions=1, timeout_s=120, env={"OTEL_SERVICE_NAME": service}) as w:
            time.sleep(3)
            with otel_backends.collector_down(kill=True):
                time.sleep(30)
                assert agent.proc.poll() is None
            produced = w.wait()
        try:  # the exporter retries every 5 s at most; the rest is the Collector's restart and Jaeger's ingestion
            after = wait_until(lambda: [t for t in otel_backends.jaeger.traces(service, lookback=600, limit=10_000)
                                        if t["spans"][0]["start_us"] * 1000 > produced.produced[-1].send_ns - 5e9],
                               timeout=60, what="spans sent after the Collector came back")
        except Exception as exc:  # what the agent said is the first thing to read
            raise AssertionError(f"{exc}; the agent said:\n{''.join(agent._err_lines)[-3000:]}") from None
    assert after
    err = agent.err
    warnings = [line for line in err.splitlines() if "cannot export" in line]
    assert 1 <= len(warnings) <= 2, err  # one line a minute at most
    assert "again after" in err
    summary = err.strip().splitlines()[-1]
    dropped = int(summary.split("dropped ")[1].split()[0])
    assert dropped > 0, summary  # 30 s of 40 spans/s does not fit a queue of 40
    in_jaeger = sum(len(t["spans"]) for t in otel_backends.jaeger.traces(service, lookback=600, limit=10_000))
    assert in_jaeger < len(produced.produced)  # what was dropped is gone, and said so
