"""The four client workloads against the real broker: their ground truth must be complete and
consistent, and what the broker holds afterwards (log sizes, end offsets, committed offsets,
group types, transactions) must agree with what the workloads claim they did.

The broker is observed with kafka-python's admin client (plain Kafka requests), so these checks
do not depend on the client under test, except for kafka-python's own runs.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from tests.workloads import (CLIENTS, CODECS, GroundTruth, GroundTruthError, Unsupported,
                             WorkloadError, command, run_workload, start_workload)

integration = pytest.mark.integration

MESSAGES = 200
PARTITIONS = 3
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")

# Which codec each client is run with. Every codec is covered by at least three clients; the JVM
# starts slowly, so Java gets two. kafka-python's snappy/lz4/zstd use the optional packages
# (python-snappy, lz4, zstandard) of the project's test dependencies.
CODEC_CASES = ([("java", "none"), ("java", "zstd")]
               + [("go", c) for c in CODECS]
               + [("confluent", c) for c in CODECS]
               + [("kafkapython", c) for c in CODECS])
KIP848 = ("java", "go", "confluent")          # support --group-protocol consumer
NO_KIP848 = ("kafkapython",)


def _topic(client: str, what: str) -> str:
    return f"wl-{client}-{what}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def admin(kafka_broker):
    a = KafkaAdminClient(bootstrap_servers=kafka_broker.direct_bootstrap,
                         client_id="test-workloads-admin")
    yield a
    a.close()


@pytest.fixture(scope="module")
def probe(kafka_broker):
    c = KafkaConsumer(bootstrap_servers=kafka_broker.direct_bootstrap,
                      client_id="test-workloads-probe")
    yield c
    c.close()


def end_offsets(probe, topic: str) -> dict[int, int]:
    parts = probe.partitions_for_topic(topic) or set()
    ends = probe.end_offsets([TopicPartition(topic, p) for p in parts])
    return {tp.partition: off for tp, off in ends.items()}


def log_bytes(admin, topic: str) -> int:
    total = 0
    for broker in admin.describe_log_dirs([topic]):
        for d in broker["log_dirs"]:
            for t in d["topics"]:
                if t["name"] == topic:
                    total += sum(p["partition_size"] for p in t["partitions"])
    return total


def group_info(admin, group: str) -> dict:
    found = [g for g in admin.list_groups() if g["group_id"] == group]
    assert len(found) == 1, f"group {group} not listed by the broker: {found}"
    return found[0]


def committed(admin, group: str) -> dict[int, int]:
    offsets = admin.list_group_offsets({group: None})[group]
    return {tp.partition: om.offset for tp, om in offsets.items()}


def check_run(gt: GroundTruth, client: str, topic: str, *, messages: int = MESSAGES,
              partitions: int = PARTITIONS, client_id: str | None = None) -> None:
    """What every complete round trip must show, beyond check_consistent()."""
    gt.check_consistent(expected_messages=messages)
    base = client_id or f"okw-{client}"
    assert gt.client == client
    assert gt.pid == gt.process_pid, "ground truth pid is not the workload process"
    assert gt.version and gt.version != "unknown"
    assert gt.client_id == base
    assert gt.producer_client_id == f"{base}-p"
    assert gt.consumer_client_id == f"{base}-c"
    assert gt.groups == {f"{topic}-group"}
    assert sorted(p.key for p in gt.produced) == sorted(f"k{i}" for i in range(messages))
    assert {p.partition for p in gt.produced} == set(range(partitions))
    assert {c.partition for c in gt.consumed} == set(range(partitions))
    assert all(p.value_size == int(gt.options.get("size", 100)) for p in gt.produced)


def check_committed(admin, gt: GroundTruth, group: str, transactional: bool = False) -> None:
    """The group committed exactly what the workload consumed, and left the group."""
    last = {p: max(offs) for (_, p), offs in gt.consumed_offsets().items()}
    got = committed(admin, group)
    assert set(got) == set(last), f"committed partitions {got} vs consumed {last}"
    for p, off in last.items():
        # a transactional partition ends with a commit marker the consumer may step over
        allowed = {off + 1, off + 2} if transactional else {off + 1}
        assert got[p] in allowed, f"partition {p}: committed {got[p]}, last consumed {off}"
    assert group_info(admin, group)["group_state"] == "Empty"


# --------------------------------------------------------------------------- round trips

@integration
@pytest.mark.parametrize("client,codec", CODEC_CASES,
                         ids=[f"{c}-{codec}" for c, codec in CODEC_CASES])
def test_round_trip_with_compression(kafka_broker, admin, probe, tmp_path, client, codec):
    topic = _topic(client, codec)
    size = 1000
    headers = codec == "none"
    gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "truth.jsonl",
                      partitions=PARTITIONS, messages=MESSAGES, size=size, compression=codec,
                      headers=headers, timeout_s=60)
    check_run(gt, client, topic)

    # the broker holds exactly the produced records ...
    ends = end_offsets(probe, topic)
    assert ends == {p: max(offs) + 1 for (_, p), offs in gt.produced_offsets().items()}
    assert sum(ends.values()) == MESSAGES
    # ... compressed or not, as asked (values are runs of letters: they compress very well)
    stored = log_bytes(admin, topic)
    if codec == "none":
        assert stored >= MESSAGES * size
    else:
        assert 0 < stored < MESSAGES * size / 4, f"{codec}: {stored} bytes stored"
    check_committed(admin, gt, f"{topic}-group")
    assert group_info(admin, f"{topic}-group")["group_type"] == "classic"
    if headers:
        assert all(TRACEPARENT.match(p.traceparent or "") for p in gt.produced)
        assert all(TRACEPARENT.match(c.traceparent or "") for c in gt.consumed)
        assert len({p.traceparent for p in gt.produced}) == MESSAGES


@integration
@pytest.mark.parametrize("client", KIP848)
def test_kip848_consumer_group(kafka_broker, admin, tmp_path, client):
    topic = _topic(client, "kip848")
    gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "truth.jsonl",
                      partitions=PARTITIONS, messages=MESSAGES, group_protocol="consumer",
                      timeout_s=60)
    check_run(gt, client, topic)
    info = group_info(admin, f"{topic}-group")
    assert info["group_type"] == "consumer", info     # the broker ran it as a KIP-848 group
    check_committed(admin, gt, f"{topic}-group")


@integration
@pytest.mark.parametrize("client", NO_KIP848)
def test_kip848_unsupported_exits_3(kafka_broker, tmp_path, client):
    with pytest.raises(Unsupported) as exc:
        run_workload(client, kafka_broker.bootstrap, _topic(client, "kip848"),
                     tmp_path / "truth.jsonl", group_protocol="consumer", timeout_s=30)
    assert exc.value.returncode == 3
    assert len(exc.value.stderr.strip().splitlines()) == 1
    assert "consumer" in exc.value.stderr


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_transactional(kafka_broker, admin, probe, tmp_path, client):
    topic = _topic(client, "tx")
    client_id = f"okw-{client}-{uuid.uuid4().hex[:6]}"   # own transactional.id per run
    gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "truth.jsonl",
                      partitions=PARTITIONS, messages=MESSAGES, transactional=True,
                      headers=True, client_id=client_id, timeout_s=60)
    check_run(gt, client, topic, client_id=client_id)
    # every partition ends with the transaction's commit marker, one offset past the data
    ends = end_offsets(probe, topic)
    assert ends == {p: max(offs) + 2 for (_, p), offs in gt.produced_offsets().items()}
    tx = admin.describe_transactions([f"{client_id}-tx"])[f"{client_id}-tx"]
    assert tx.state.value == "CompleteCommit", tx
    check_committed(admin, gt, f"{topic}-group", transactional=True)


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_acks0_has_no_offsets(kafka_broker, probe, tmp_path, client):
    topic = _topic(client, "acks0")
    gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "truth.jsonl",
                      partitions=PARTITIONS, messages=MESSAGES, acks=0, timeout_s=60)
    check_run(gt, client, topic)
    assert all(p.offset is None for p in gt.produced)
    assert gt.produced_offsets() == {}
    # the consumer saw every record, and nothing else is on the topic
    assert sorted(c.key for c in gt.consumed) == sorted(f"k{i}" for i in range(MESSAGES))
    ends = end_offsets(probe, topic)
    assert ends == {p: max(offs) + 1 for (_, p), offs in gt.consumed_offsets().items()}


@integration
@pytest.mark.parametrize("client", ["go", "confluent", "kafkapython"])
def test_acks1_paced_small_batches(kafka_broker, tmp_path, client):
    topic = _topic(client, "paced")
    rate = 400
    t0 = time.monotonic()
    gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "truth.jsonl",
                      partitions=PARTITIONS, messages=MESSAGES, acks=1, rate=rate, linger_ms=0,
                      batch_size=512, size=200, timeout_s=60)
    check_run(gt, client, topic)
    sends = sorted(p.send_ns for p in gt.produced)
    span_s = (sends[-1] - sends[0]) / 1e9
    # 200 records at 400/s take about half a second to hand over
    assert (MESSAGES - 1) / rate * 0.9 <= span_s <= time.monotonic() - t0


@integration
def test_separate_producer_and_consumers_agree(kafka_broker, tmp_path):
    """One client produces, two others consume the same topic in their own groups."""
    topic = _topic("mixed", "split")
    produced = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "p.jsonl",
                            partitions=PARTITIONS, messages=MESSAGES, mode="produce",
                            headers=True, compression="gzip")
    produced.check_consistent()
    assert produced.consumed == [] and len(produced.produced) == MESSAGES
    by_pos = {(p.partition, p.offset): p for p in produced.produced}
    for client in ("confluent", "kafkapython", "java"):
        consumed = run_workload(client, kafka_broker.bootstrap, topic,
                                tmp_path / f"{client}.jsonl", messages=MESSAGES, mode="consume",
                                group=f"{topic}-{client}")
        consumed.check_consistent()
        assert consumed.produced == [] and len(consumed.consumed) == MESSAGES
        assert consumed.groups == {f"{topic}-{client}"}
        assert {(c.partition, c.offset) for c in consumed.consumed} == set(by_pos)
        for c in consumed.consumed:
            p = by_pos[(c.partition, c.offset)]
            assert (c.key, c.timestamp_ms, c.traceparent) == (p.key, p.timestamp_ms,
                                                               p.traceparent)
            assert c.consume_ns >= p.ack_ns


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_timeout_exits_2(kafka_broker, tmp_path, client):
    """Asked for more records than the topic has, a consumer gives up at --timeout-s."""
    topic = _topic(client, "timeout")
    run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "p.jsonl",
                 partitions=1, messages=5, mode="produce").check_consistent()
    t0 = time.monotonic()
    with pytest.raises(WorkloadError) as exc:
        run_workload(client, kafka_broker.bootstrap, topic, tmp_path / "c.jsonl",
                     messages=6, mode="consume", timeout_s=4)
    took = time.monotonic() - t0
    assert exc.value.returncode == 2, exc.value
    assert not isinstance(exc.value, Unsupported)
    assert 4 <= took < 30
    partial = GroundTruth.load(tmp_path / "c.jsonl")
    assert len(partial.consumed) == 5 and partial.done_consumed == 5


@integration
def test_consumer_started_before_its_producer(kafka_broker, admin, tmp_path):
    """A consumer waiting on a topic it created receives a later producer's records live."""
    topic = _topic("live", "first")
    group = f"{topic}-group"
    with start_workload("go", kafka_broker.bootstrap, topic, tmp_path / "c.jsonl",
                        partitions=PARTITIONS, messages=MESSAGES, mode="consume",
                        group_protocol="consumer", timeout_s=60) as consumer:
        deadline = time.monotonic() + 30
        while consumer.proc.poll() is None and time.monotonic() < deadline:
            if any(g["group_id"] == group and g["group_state"] == "Stable"
                   for g in admin.list_groups()):
                break
            time.sleep(0.2)
        assert consumer.proc.poll() is None, "consumer exited before anything was produced"
        assert group_info(admin, group)["group_state"] == "Stable"
        produced = run_workload("kafkapython", kafka_broker.bootstrap, topic,
                                tmp_path / "p.jsonl", messages=MESSAGES, mode="produce",
                                rate=200, headers=True)
        consumed = consumer.wait()
    produced.check_consistent()
    consumed.check_consistent()
    assert consumed.pid == consumer.pid
    by_pos = {(p.partition, p.offset): p for p in produced.produced}
    assert {(c.partition, c.offset) for c in consumed.consumed} == set(by_pos)
    assert {c.partition for c in consumed.consumed} == set(range(PARTITIONS))
    for c in consumed.consumed:
        p = by_pos[(c.partition, c.offset)]
        assert c.traceparent == p.traceparent and c.key == p.key
        # (a live consumer may see a record before the producer has processed its ack)
        assert c.consume_ns >= p.send_ns
    # live: the consumer got records while the producer was still sending (200/s for ~1 s)
    assert min(c.consume_ns for c in consumed.consumed) < max(p.send_ns for p in produced.produced)


# --------------------------------------------------------------------------- the runner itself

def test_command_lines():
    argv = command("go", bootstrap="h:1", topic="t", out="/x", messages=5, group_protocol="consumer",
                   transactional=True, headers=False, linger_ms=None)
    assert argv[0].endswith("tests/workloads/go/workload")
    assert argv[1:] == ["--bootstrap", "h:1", "--topic", "t", "--out", "/x", "--messages", "5",
                        "--group-protocol", "consumer", "--transactional"]
    assert command("confluent", topic="t")[1].endswith("confluent_workload.py")
    assert command("kafkapython", topic="t")[1].endswith("kafkapython_workload.py")
    assert "--topic" in command("java", topic="t")
    with pytest.raises(ValueError):
        command("rust", topic="t")


def _truth_lines(produce_offsets=(0, 1, 2), consume_offsets=(0, 1, 2), *, done=None,
                 ack_after_consume=False) -> list[str]:
    import json
    now = time.time_ns()
    ev = [dict(event="start", client="go", pid=1, client_id="c", version="v", time_ns=now)]
    for i, o in enumerate(produce_offsets):
        ev.append(dict(event="produce", client="go", pid=1, client_id="c-p", topic="t",
                       partition=0, offset=o, timestamp_ms=now // 10**6, send_ns=now + 1,
                       ack_ns=now + (10**6 if ack_after_consume else 2), key=f"k{i}",
                       value_size=1))
    for i, o in enumerate(consume_offsets):
        ev.append(dict(event="consume", client="go", pid=1, client_id="c-c", group="g",
                       topic="t", partition=0, offset=o, timestamp_ms=now // 10**6,
                       consume_ns=now + 3, key=f"k{o}"))
    ev.append(dict(event="done", client="go", pid=1,
                   produced=len(produce_offsets) if done is None else done,
                   consumed=len(consume_offsets), time_ns=now + 10**7))
    return [json.dumps(e) for e in ev]


def test_ground_truth_accepts_a_consistent_run():
    gt = GroundTruth.parse(_truth_lines()).check_consistent(expected_messages=3)
    assert gt.produced_offsets() == {("t", 0): [0, 1, 2]}
    assert gt.client_ids == {"c", "c-p", "c-c"}


@pytest.mark.parametrize("kwargs,needle", [
    (dict(consume_offsets=(0, 1, 1)), "more than once"),
    (dict(consume_offsets=(0, 1)), "never consumed"),
    (dict(produce_offsets=(0, 2, 3), consume_offsets=(0, 2, 3)), "not contiguous"),
    (dict(consume_offsets=(0, 2, 1)), "out of order"),
    (dict(done=5), "done says produced=5"),
    (dict(ack_after_consume=True), "consume_ns"),
])
def test_ground_truth_catches(kwargs, needle):
    gt = GroundTruth.parse(_truth_lines(**kwargs))
    with pytest.raises(GroundTruthError, match=needle):
        gt.check_consistent()


def test_ground_truth_rejects_old_times_and_bad_lines():
    gt = GroundTruth.parse(_truth_lines())
    with pytest.raises(GroundTruthError, match="5 minutes"):
        gt.check_consistent(now_ns=time.time_ns() + 10 * 60 * 10**9)
    with pytest.raises(ValueError, match="lacks"):
        GroundTruth.parse(['{"event":"start","client":"go"}'])
    with pytest.raises(ValueError, match="start"):
        GroundTruth.parse(_truth_lines()[1:])
