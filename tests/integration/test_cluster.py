"""The 3-broker test bed: it starts, spreads leaders, moves a partition under live traffic, and
Kafka's own view of a group's offsets agrees with what the clients consumed."""

import collections
import json
import time

import pytest

from tests.testbed.fixtures import unique_name
from tests.workloads import run_workload, start_workload

pytestmark = pytest.mark.integration


def test_cluster_has_three_brokers_in_one_quorum(kafka_cluster):
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap.split(","))
    try:
        brokers = {b["broker_id"]: (b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()
    assert sorted(brokers) == [1, 2, 3]
    assert {f"{h}:{p}" for h, p in brokers.values()} == set(kafka_cluster.bootstrap.split(","))
    quorum = kafka_cluster.run_tool("kafka-metadata-quorum", "--bootstrap-server", kafka_cluster.bootstrap,
                                    "describe", "--status", check=True).stdout
    voters = json.loads(quorum.split("CurrentVoters:", 1)[1].splitlines()[0])
    assert sorted(v["id"] for v in voters) == [1, 2, 3], quorum


def test_rf3_topic_has_leaders_on_different_brokers(kafka_cluster, request):
    topic = kafka_cluster.create_topic(unique_name(request), partitions=3)
    parts = kafka_cluster.partitions(topic)
    assert sorted(parts) == [0, 1, 2]
    for state in parts.values():
        assert sorted(state.replicas) == [1, 2, 3]
        assert sorted(state.isr) == [1, 2, 3]
    assert {state.leader for state in parts.values()} == {1, 2, 3}
    assert kafka_cluster.end_offsets(topic) == {0: 0, 1: 0, 2: 0}


def test_reassignment_under_traffic_loses_no_offset(kafka_cluster, request, tmp_path):
    """Partition 0 moves to the broker that held none of its replicas and that broker becomes its
    leader, while a producer and a consumer group run: every produced offset is consumed once."""
    topic = kafka_cluster.create_topic(unique_name(request), partitions=3, replication_factor=2)
    before = kafka_cluster.partitions(topic)[0]
    newcomer = ({1, 2, 3} - set(before.replicas)).pop()
    target = [newcomer, before.leader]
    group = f"{topic}-g"
    opts = dict(partitions=3, messages=9000, timeout_s=120)
    with start_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "c.jsonl", mode="consume",
                        group=group, **opts) as consumer, \
            start_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "p.jsonl", mode="produce",
                           rate=200, **opts) as producer:
        time.sleep(4)   # both running: records flowing through partition 0
        after = kafka_cluster.reassign_partition(topic, 0, target)
        moved_at = time.time_ns()
        produced = producer.wait()
        consumed = consumer.wait()
    assert after.leader == newcomer != before.leader
    assert after.replicas == tuple(target)
    assert sorted(after.isr) == sorted(target)
    assert any(p.partition == 0 and p.send_ns > moved_at for p in produced.produced), \
        "the reassignment finished after the producer: nothing tested"
    produced.check_consistent()
    consumed.check_consistent()
    assert consumed.consumed_offsets() == produced.produced_offsets()

    # Kafka's own view agrees with the commits: everything consumed, nothing left
    ends = kafka_cluster.end_offsets(topic)
    offsets = kafka_cluster.group_offsets(group)
    per_partition = collections.Counter(p.partition for p in produced.produced)
    for partition, end in ends.items():
        assert end == per_partition[partition]
        row = offsets[(topic, partition)]
        assert (row.committed, row.log_end, row.lag) == (end, end, 0)


def test_group_offsets_agree_with_commits_of_a_group_behind(kafka_cluster, request, tmp_path):
    """A group that consumed and committed everything of a first run, then 40 more records: Kafka's
    table says committed = what the consumer took, log end = what was produced, lag = the 40."""
    topic = kafka_cluster.create_topic(unique_name(request), partitions=2)
    first = run_workload("java", kafka_cluster.bootstrap, topic, tmp_path / "j.jsonl",
                         partitions=2, messages=120).check_consistent()
    more = run_workload("go", kafka_cluster.bootstrap, topic, tmp_path / "g.jsonl", mode="produce",
                        partitions=2, messages=40).check_consistent()
    group = first.options.get("group") or f"{topic}-group"
    offsets = kafka_cluster.group_offsets(group)
    ends = kafka_cluster.end_offsets(topic)
    consumed = first.consumed_offsets()
    extra = collections.Counter(p.partition for p in more.produced)
    assert sorted(offsets) == [(topic, 0), (topic, 1)]
    for (t, partition), row in offsets.items():
        committed = consumed[(t, partition)][-1] + 1
        assert row.committed == committed
        assert row.log_end == ends[partition] == committed + extra[partition]
        assert row.lag == extra[partition]
    assert sum(row.lag for row in offsets.values()) == 40
