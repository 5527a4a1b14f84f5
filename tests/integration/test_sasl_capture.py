"""SASL credentials never leave the kernel: a SASL/PLAIN listener, two real clients logging in, and the
password in no captured event, no recording and no `trace` output, in every capture mode."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import uuid

import pytest

from otel_kafka_ebpf.capture.loader import CaptureSettings
from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.capture.streams import GapReason, StreamData
from tests.testbed.agent_capture import BackgroundCapture, declared_skips
from tests.testbed.kafka import KafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

USER = "alice"
PASSWORD = f"pw-{uuid.uuid4().hex}"

CLIENT = r"""
import sys
client, bootstrap, topic, user, password = sys.argv[1:6]
if client == "kafkapython":
    from kafka import KafkaConsumer, KafkaProducer
    auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_username=user,
                sasl_plain_password=password)
    p = KafkaProducer(bootstrap_servers=bootstrap, client_id="sasl-kafkapython", **auth)
    for i in range(20):
        p.send(topic, key=b"k%d" % i, value=b"v" * 100).get(30)
    p.close()
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, client_id="sasl-kafkapython-c", group_id=topic + "-kp",
                      auto_offset_reset="earliest", consumer_timeout_ms=10000, **auth)
    got = sum(1 for _ in zip(range(20), c))
    c.close()
else:
    from confluent_kafka import Consumer, Producer
    auth = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": user,
            "sasl.password": password}
    p = Producer({"bootstrap.servers": bootstrap, "client.id": "sasl-confluent", **auth})
    for i in range(20):
        p.produce(topic, key=b"k%d" % i, value=b"v" * 100)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "client.id": "sasl-confluent-c", "group.id": topic + "-cf",
                  "auto.offset.reset": "earliest", **auth})
    c.subscribe([topic])
    got = 0
    for _ in range(60):
        m = c.poll(1.0)
        if m is not None and not m.error():
            got += 1
        if got >= 20:
            break
    c.close()
assert got >= 20, got
"""


@pytest.fixture(scope="module")
def sasl_broker():
    with KafkaBroker(sasl_plain_users={USER: PASSWORD}) as broker:
        yield broker


def _agent(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert "tracing" in first or "recording" in first, first
    return proc


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def test_the_password_appears_nowhere(sasl_broker, tmp_path):
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    sasl_broker.create_topic(topic, partitions=1)
    secret = PASSWORD.encode()
    recordings = {mode: tmp_path / f"{mode}.okr" for mode in ("digest", "full")}
    agents = {"trace digest": _agent("trace", "--json"), "trace full": _agent("trace", "--json", "--capture", "full")}
    for mode, path in recordings.items():
        agents[f"record {mode}"] = _agent("record", "--out", str(path), "--capture", mode)
    outputs = {}
    try:
        with BackgroundCapture(CaptureSettings(mode="digest")) as digest, \
                BackgroundCapture(CaptureSettings(mode="full")) as full:
            for client in ("kafkapython", "confluent"):
                run = subprocess.run([sys.executable, "-c", CLIENT, client, sasl_broker.sasl_bootstrap, topic, USER,
                                      PASSWORD], capture_output=True, text=True, timeout=180)
                assert run.returncode == 0, run.stderr
    finally:
        for name, proc in agents.items():
            outputs[name] = _stop(proc)
    sasl_port = sasl_broker.sasl_port
    for name, capture in (("digest", digest), ("full", full)):
        ours = {c.opened.conn_id for c in capture.connections().values() if c.opened.remote_port == sasl_port}
        assert ours, f"{name}: the clients' connections to the SASL listener were not captured"
        data = [e for e in capture.events if isinstance(e, StreamData) and e.conn_id in ours]
        assert data and not any(secret in e.data for e in data), f"{name}: the password was captured"
        sasl_skips = [s for s in declared_skips(capture.events) if s[0] in ours and s[4] == GapReason.SASL]
        assert sasl_skips, f"{name}: no SASL body was declared skipped"
    for mode, path in recordings.items():
        raw = gzip.decompress(path.read_bytes())
        assert secret not in raw
        assert not any(secret in e.data for e in read_recording(path) if isinstance(e, StreamData)), mode
    for name, (out, err) in outputs.items():
        assert PASSWORD not in out and PASSWORD not in err, name
    for name in ("trace digest", "trace full"):
        out = outputs[name][0]
        assert '"api":"SaslAuthenticate"' in out or '"api":"SaslHandshake"' in out, name
        # the login did not stop the agent from following what came after it
        for client_id in ("sasl-kafkapython", "sasl-confluent"):
            assert f'"client_id":"{client_id}"' in out and '"api":"Produce"' in out, (name, client_id)
