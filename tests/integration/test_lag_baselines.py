"""The server-side baselines of bench/bench_lag.py against the real 3-broker cluster: the Admin API
poller agrees with Kafka's own consumer-groups table and estimates lag in seconds; Burrow 1.2.1
cannot read Kafka 4.x, and says so in the ways tests/testbed/burrow.py documents."""

import time

import pytest

from tests.testbed.burrow import BurrowStack, cannot_read_kafka, evidence, format_evidence, sees_group
from tests.testbed.fixtures import unique_name
from tests.testbed.lag_poller import LagPoller
from tests.workloads import run_workload, start_workload

pytestmark = pytest.mark.integration


def test_poller_agrees_with_kafka_and_estimates_lag_seconds(kafka_cluster, request, tmp_path):
    topic = kafka_cluster.create_topic(unique_name(request), partitions=2)
    group = f"{topic}-group"
    run_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "first.jsonl", partitions=2,
                 messages=200).check_consistent()   # consumed and committed: lag 0
    poller = LagPoller(kafka_cluster.bootstrap, [group], interval_s=1.5)
    try:
        caught_up = poller.poll_once()
        assert caught_up.error is None
        assert [(p.partition, p.lag_messages, p.lag_seconds) for p in caught_up.partitions] == \
            [(0, 0, 0.0), (1, 0, 0.0)]

        # 50/s more while nobody consumes: the table fills with points 1.5 s apart
        with start_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "more.jsonl",
                            mode="produce", partitions=2, messages=400, rate=50) as producer:
            while producer.proc.poll() is None:
                time.sleep(poller.interval_s)
                poller.poll_once()
            more = producer.wait().check_consistent()
        last = poller.poll_once()
    finally:
        poller.stop()
    assert last.error is None
    kafka_view = kafka_cluster.group_offsets(group)
    for p in last.partitions:
        row = kafka_view[(topic, p.partition)]
        assert (p.committed, p.end, p.lag_messages) == (row.committed, row.log_end, row.lag)
        assert p.lag_messages == sum(1 for r in more.produced if r.partition == p.partition)
        # truth: the oldest unconsumed message is the first one of the second run
        first_unconsumed = min((r for r in more.produced if r.partition == p.partition),
                               key=lambda r: r.offset)
        truth = last.time - first_unconsumed.send_ns / 1e9
        assert p.lag_seconds == pytest.approx(truth, abs=2.0), (p, truth)
    lags = [poll.of(group, topic, 0).lag_messages for poll in poller.polls]
    assert lags == sorted(lags) and lags[-1] > lags[0], "lag in messages grows while nobody consumes"


def test_burrow_1_2_1_cannot_monitor_kafka_4(kafka_cluster, request, tmp_path):
    """Burrow's own words: no broker offsets (ListOffsets v0 is gone since Kafka 4.0), no
    __consumer_offsets records it can decode, so the group is NOTFOUND while Kafka lists it."""
    topic = kafka_cluster.create_topic(unique_name(request), partitions=3)
    group = f"{topic}-group"
    opts = dict(partitions=3, messages=1500, timeout_s=60)
    with BurrowStack(kafka_cluster.bootstrap, tmp_path / "burrow") as burrow, \
            start_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                           rate=50, **opts), \
            start_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "c.jsonl", mode="consume",
                           group=group, **opts):
        deadline = time.monotonic() + 30   # three of Burrow's offset refreshes, 30 commits a partition
        while time.monotonic() < deadline and not sees_group(burrow, group):
            time.sleep(2)
        logs = [n.log_file for n in getattr(kafka_cluster, "nodes", [])]
        ev = evidence(burrow, group, logs)
        seen = sees_group(burrow, group)
    report = format_evidence(ev)
    print(report)
    assert not seen, "Burrow 1.2.1 now sees a Kafka 4.x group: update bench_lag and the README\n" + report
    assert set(kafka_cluster.group_offsets(group)) == {(topic, p) for p in range(3)}
    assert ev["http"][f"/v3/kafka/oke/consumer/{group}/lag"]["status"] == "NOTFOUND", report
    assert group not in ev["http"]["/v3/kafka/oke/consumer"], report
    assert cannot_read_kafka(ev) == ["broker offsets", "__consumer_offsets"], report
    assert any("version=4" in key and "message_type=offset" in key for key in ev["log"]), report
    if logs:
        assert any("(ListOffsets) and unsupported version 0" in line for line in ev["broker_log"]), report
