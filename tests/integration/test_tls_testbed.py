"""The TLS test bed (issue 15): a broker with SSL and SASL_SSL listeners beside PLAINTEXT, and every client
workload producing and consuming over TLS with the test CA, hostname checked. No agent here: this is the bed
the TLS uprobes are tested on."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from tests.testbed.kafka import KafkaBroker, api_versions
from tests.testbed.tls import OPENSSL, handshake, make_tls_files, write_client_config
from tests.workloads import CLIENTS, GroundTruth, WorkloadError, run_workload

pytestmark = pytest.mark.integration

MESSAGES = 50


@pytest.fixture(scope="module")
def tls_broker():
    with KafkaBroker(tls=True) as broker:
        yield broker


def _topic(what: str) -> str:
    return f"tls-{what}-{uuid.uuid4().hex[:8]}"


def _check(gt: GroundTruth) -> None:
    gt.check_consistent(expected_messages=MESSAGES)
    assert len(gt.produced) == MESSAGES and all(p.offset is not None for p in gt.produced)
    assert len(gt.consumed) == MESSAGES and all(c.offset is not None for c in gt.consumed)


def test_tls_files_are_quick_and_verify(tmp_path):
    t0 = time.monotonic()
    files = make_tls_files(tmp_path)
    assert time.monotonic() - t0 < 1.0
    assert files.key.read_text().startswith("-----BEGIN PRIVATE KEY-----")   # PKCS#8, unencrypted
    assert files.cert.read_text().count("BEGIN CERTIFICATE") == 2            # leaf, then the CA
    res = subprocess.run([OPENSSL, "verify", "-CAfile", files.ca, "-verify_ip", "127.0.0.1",
                          "-verify_hostname", "localhost", files.cert], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("client", CLIENTS)
def test_ssl(tls_broker, client, tmp_path):
    gt = run_workload(client, tls_broker.ssl_bootstrap, _topic(client), tmp_path / f"{client}.jsonl",
                      messages=MESSAGES, security_protocol="SSL", ca_file=tls_broker.tls_files.ca)
    _check(gt)


@pytest.mark.parametrize("client", ["go", "kafkapython"])
def test_sasl_ssl(tls_broker, client, tmp_path):
    (user, password), = tls_broker.sasl_ssl_users.items()
    gt = run_workload(client, tls_broker.sasl_ssl_bootstrap, _topic(client), tmp_path / f"{client}.jsonl",
                      messages=MESSAGES, security_protocol="SASL_SSL", ca_file=tls_broker.tls_files.ca,
                      sasl_user=user, sasl_password=password)
    _check(gt)


def test_sasl_ssl_wrong_password_fails(tls_broker, tmp_path):
    (user, _), = tls_broker.sasl_ssl_users.items()
    with pytest.raises(WorkloadError) as e:
        run_workload("go", tls_broker.sasl_ssl_bootstrap, _topic("badpw"), tmp_path / "go.jsonl", messages=1,
                     security_protocol="SASL_SSL", ca_file=tls_broker.tls_files.ca, sasl_user=user,
                     sasl_password="wrong", timeout_s=10)
    assert "SASL_AUTHENTICATION_FAILED" in e.value.stderr, e.value.stderr


def test_plaintext_client_at_the_ssl_port_fails(tls_broker, tmp_path):
    assert handshake("127.0.0.1", tls_broker.ssl_port, tls_broker.tls_files.ca) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises((OSError, ValueError)):   # the answer is a TLS alert record, not a Kafka response
        api_versions("127.0.0.1", tls_broker.ssl_port, timeout=3)
    with pytest.raises(WorkloadError) as e:
        run_workload("go", tls_broker.ssl_bootstrap, _topic("plain"), tmp_path / "go.jsonl", messages=1,
                     timeout_s=5)
    assert "tls" in e.value.stderr, e.value.stderr   # franz-go recognises the alert


def test_producer_performance_over_ssl(tls_broker, tmp_path):
    """The benchmark's ProducerPerformance with --producer.config from write_client_config()."""
    topic = tls_broker.create_topic(_topic("perf"))
    config = write_client_config(tmp_path / "ssl.properties", tls_broker.tls_files.ca)
    res = tls_broker.run_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", "2000",
                              "--record-size", "100", "--throughput", "-1", "--producer.config", config,
                              "--producer-props", f"bootstrap.servers={tls_broker.ssl_bootstrap}", "acks=1",
                              check=True)
    totals = re.findall(r"^(\d+) records sent", res.stdout, re.M)
    assert totals and int(totals[-1]) == 2000, res.stdout
    assert tls_broker.end_offsets(topic) == {0: 2000}   # read over PLAINTEXT
