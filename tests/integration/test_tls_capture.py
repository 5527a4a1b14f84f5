"""TLS as exactly as plain text (issue 15): real clients over the test bed's SSL and SASL_SSL listeners, `trace --json`
beside them, every produced and consumed offset of their ground truth traced; digest mode copies no record
payload and the SASL password appears in no output and no recording; a client whose TLS no probe sees (Java's
JSSE) is reported, not silently absent."""

from __future__ import annotations

import gzip
import os
import time
import uuid

import pytest

from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.capture.streams import ConnectionOpened, StreamData
from tests.testbed.agent_cli import AgentCLI, TraceCLI, assert_every_offset_traced
from tests.testbed.kafka import KafkaBroker
from tests.workloads import record_value, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

MESSAGES = 200
PASSWORD = f"pw-{uuid.uuid4().hex}"
USER = "tls-alice"
# clients whose TLS library the probes follow: Python's ssl module on the shared libssl.so.3, and the OpenSSL
# linked statically into confluent-kafka's librdkafka
DECODED = ("kafkapython", "confluent")


@pytest.fixture(scope="module")
def tls_broker():
    with KafkaBroker(tls=True, sasl_plain_users={USER: PASSWORD}) as broker:
        yield broker


def _tls_options(broker: KafkaBroker, protocol: str) -> dict:
    opts = {"security_protocol": protocol, "ca_file": str(broker.tls_files.ca)}
    if protocol == "SASL_SSL":
        opts.update(sasl_user=USER, sasl_password=PASSWORD)
    return opts


@pytest.mark.parametrize("client", DECODED)
def test_every_offset_over_ssl(tls_broker, tmp_path, client):
    topic = f"tls-{client}-{uuid.uuid4().hex[:8]}"
    tls_broker.create_topic(topic, partitions=2)
    with TraceCLI() as trace:
        gt = run_workload(client, tls_broker.ssl_bootstrap, topic, tmp_path / f"{client}.jsonl", messages=MESSAGES,
                          partitions=2, **_tls_options(tls_broker, "SSL"))
    gt.check_consistent(expected_messages=MESSAGES)
    pairs = assert_every_offset_traced(trace, gt, client)
    assert {p["server"].rsplit(":", 1)[-1] for p in pairs} == {str(tls_broker.ssl_port)}, \
        "the pairs are the TLS listener's"
    assert not [p for p in pairs if p.get("event") == "tls_undecoded"]


@pytest.mark.parametrize("client", DECODED)
def test_sasl_ssl_digest_copies_no_payload_and_no_password(tls_broker, tmp_path, client):
    topic = f"tls-sasl-{client}-{uuid.uuid4().hex[:8]}"
    tls_broker.create_topic(topic, partitions=1)
    recording = tmp_path / "digest.okr"
    with TraceCLI() as trace, AgentCLI("record", "--out", str(recording), ready="recording") as record:
        gt = run_workload(client, tls_broker.sasl_ssl_bootstrap, topic, tmp_path / f"{client}.jsonl",
                          messages=MESSAGES, size=300, **_tls_options(tls_broker, "SASL_SSL"))
    record.stop()
    gt.check_consistent(expected_messages=MESSAGES)
    assert_every_offset_traced(trace, gt, client)
    assert PASSWORD not in trace.out and PASSWORD not in trace.err
    raw = gzip.decompress(recording.read_bytes())
    assert PASSWORD.encode() not in raw, "the SASL password was recorded"
    events = list(read_recording(recording))
    ours = {e.conn_id for e in events if isinstance(e, ConnectionOpened) and e.pid == gt.pid}
    assert ours and {e.tls for e in events if isinstance(e, ConnectionOpened) and e.conn_id in ours} == {"openssl"}
    data = b"".join(e.data for e in events if isinstance(e, StreamData) and e.conn_id in ours)
    # the records' values are deterministic bytes (tests/workloads); digest mode leaves records in the kernel
    for r in gt.produced[:20]:
        run = record_value(int(r.key[1:]), 300)[100:132]
        assert run not in data, f"digest mode copied record payload over TLS ({r.key})"


def test_a_java_client_over_tls_is_reported_not_absent(tls_broker, tmp_path):
    topic = f"tls-java-{uuid.uuid4().hex[:8]}"
    tls_broker.create_topic(topic, partitions=1)
    with TraceCLI() as trace:
        gt = run_workload("java", tls_broker.ssl_bootstrap, topic, tmp_path / "java.jsonl", messages=20,
                          **_tls_options(tls_broker, "SSL"))
        time.sleep(3)  # the report comes once the connection stayed undecoded for its grace (2 s)
    reports = [r for r in trace.json_lines() if r.get("event") == "tls_undecoded" and r.get("pid") == gt.pid]
    assert reports, f"the Java client's TLS connections were not reported; stderr: {trace.err}"
    assert {r["peer"] for r in reports} <= {f"127.0.0.1:{tls_broker.ssl_port}"}
    assert all("JSSE" in r["reason"] for r in reports)
