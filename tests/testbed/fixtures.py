"""pytest fixtures for the real Kafka test bed (registered in tests/conftest.py).

kafka_broker  session scope: a fresh single-node KRaft broker on free ports, or, if the
              environment sets OKE_KAFKA_BOOTSTRAP=host:port, that already running broker.
kafka_cluster session scope: a fresh 3-broker KRaft cluster (KafkaCluster) on free ports, or, if
              the environment sets OKE_KAFKA_CLUSTER_BOOTSTRAP=host:port[,...], that running
              cluster (e.g. `make kafka-up KAFKA_BROKERS=3`). Topics default to replication factor 3.
topic         function scope: a newly created topic with a unique name; 1 partition, or N with
              @pytest.mark.parametrize("topic", [N], indirect=True).
topic_factory function scope: make_topic(partitions=1, prefix=None) -> name, for several topics.
otel_backends session scope: Jaeger, a Collector running collector-config/agent-gateway.yaml and
              Prometheus scraping it, all on free ports (tests/testbed/backends.py: OtelBackends);
              the agent sends to otel_backends.otlp_grpc_endpoint (otel_backends.agent_env()).
collector_factory function scope: make_collector(config, env=None) -> a started Collector running
              a collector-config/ pipeline (or a path) on free ports; stopped after the test.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.testbed.backends import Collector, OtelBackends
from tests.testbed.kafka import ExternalKafka, KafkaBroker, KafkaCluster, KafkaTools


@pytest.fixture(scope="session")
def kafka_broker() -> KafkaTools:
    external = os.environ.get("OKE_KAFKA_BOOTSTRAP")
    if external:
        yield ExternalKafka(external).start()
        return
    with KafkaBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_cluster() -> KafkaTools:
    external = os.environ.get("OKE_KAFKA_CLUSTER_BOOTSTRAP")
    if external:
        cluster = ExternalKafka(external).start()
        cluster.default_replication_factor = 3
        yield cluster
        return
    with KafkaCluster(brokers=3) as cluster:
        yield cluster


def unique_name(request, prefix: str | None = None) -> str:
    base = prefix or re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:80]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_factory(kafka_broker, request):
    def make_topic(partitions: int = 1, prefix: str | None = None) -> str:
        return kafka_broker.create_topic(unique_name(request, prefix), partitions=partitions)
    return make_topic


@pytest.fixture
def topic(topic_factory, request) -> str:
    return topic_factory(partitions=int(getattr(request, "param", 1)))


@pytest.fixture(scope="session")
def otel_backends() -> OtelBackends:
    with OtelBackends("agent-gateway.yaml") as backends:
        yield backends


@pytest.fixture
def collector_factory():
    started: list[Collector] = []

    def make_collector(config, env=None) -> Collector:
        collector = Collector(config, env=env)
        started.append(collector)
        return collector.start()

    yield make_collector
    for collector in started:
        collector.close()
