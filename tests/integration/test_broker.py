"""The Kafka test bed itself: a real broker answers, topics and tools work."""

import re

import pytest

from tests.testbed.kafka import KafkaBroker, api_versions

pytestmark = pytest.mark.integration

PRODUCE, FETCH, API_VERSIONS, SHARE_FETCH = 0, 1, 18, 78


def test_broker_answers_api_versions(kafka_broker):
    apis = kafka_broker.api_versions()
    for key in (PRODUCE, FETCH, API_VERSIONS):
        assert key in apis, f"api {key} missing from {sorted(apis)}"
    lo, hi = apis[FETCH]
    assert lo <= hi and hi >= 12
    assert kafka_broker.bootstrap == f"{kafka_broker.host}:{kafka_broker.port}"
    assert 0 < kafka_broker.port < 65536


def test_share_groups_enabled(kafka_broker):
    assert SHARE_FETCH in kafka_broker.api_versions()
    out = kafka_broker.run_tool("kafka-features", "--bootstrap-server",
                                kafka_broker.direct_bootstrap, "describe", check=True).stdout
    level = re.search(r"Feature: share\.version\s.*FinalizedVersionLevel: (\d+)", out)
    assert level and int(level.group(1)) >= 1, out


@pytest.mark.parametrize("topic", [3], indirect=True)
def test_topic_has_requested_partitions(kafka_broker, topic):
    out = kafka_broker.describe_topic(topic)
    assert re.search(rf"Topic: {re.escape(topic)}\s+TopicId: \S+\s+PartitionCount: 3\b", out), out
    parts = re.findall(r"Partition: (\d+)\s+Leader: 1\b", out)
    assert sorted(map(int, parts)) == [0, 1, 2], out


def test_consumer_groups_describe(kafka_broker, topic):
    bs = kafka_broker.direct_bootstrap
    lines = "".join(f"k{i}:v{i}\n" for i in range(10))
    kafka_broker.run_tool("kafka-console-producer", "--bootstrap-server", bs, "--topic", topic,
                          "--property", "parse.key=true", "--property", "key.separator=:",
                          input=lines, check=True)
    group = f"{topic}-g"
    got = kafka_broker.run_tool("kafka-console-consumer", "--bootstrap-server", bs,
                                "--topic", topic, "--group", group, "--from-beginning",
                                "--max-messages", "10", "--timeout-ms", "30000", check=True)
    assert got.stdout.split() == [f"v{i}" for i in range(10)]
    desc = kafka_broker.run_tool("kafka-consumer-groups", "--bootstrap-server", bs,
                                 "--describe", "--group", group, check=True).stdout
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    row = next(l.split() for l in desc.splitlines() if l.startswith(group + " "))
    assert row[1:6] == [topic, "0", "10", "10", "0"], desc


def test_advertised_port_and_direct_listener():
    """A broker that advertises another port (where a recording proxy would sit)."""
    from tests.testbed.kafka import free_port
    adv = free_port()
    with KafkaBroker(advertised_port=adv) as kb:
        assert kb.advertised_bootstrap == f"127.0.0.1:{adv}"
        assert kb.direct_bootstrap != kb.bootstrap
        assert API_VERSIONS in api_versions("127.0.0.1", kb.port)
        props = (kb.log_dir / "server.properties").read_text()
        assert f"PLAINTEXT://127.0.0.1:{adv}" in props
        kb.create_topic("adv-t", partitions=2)  # via the DIRECT listener: no proxy needed
        assert "PartitionCount: 2" in kb.describe_topic("adv-t")
        pid, log_dir = kb.pid, kb.log_dir
    import os
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert not log_dir.exists()
