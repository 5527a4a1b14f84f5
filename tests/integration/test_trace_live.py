"""`otel-kafka-ebpf trace --json` beside each real client: every produced offset appears in a Produce pair
and every consumed offset in a Fetch pair's batches, as the client's own ground truth says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.testbed.agent_cli import TraceCLI, assert_every_offset_traced
from tests.workloads import CLIENTS, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


@pytest.mark.parametrize("client", CLIENTS)
def test_trace_reports_every_produced_and_consumed_offset(kafka_broker, topic_factory, tmp_path, client):
    topic = topic_factory(partitions=3)
    with TraceCLI() as trace:
        gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"{client}.jsonl",
                          messages=300, partitions=3, size=100, compression="lz4" if client != "java" else "zstd")
    gt.check_consistent()
    pairs = assert_every_offset_traced(trace, gt, client)
    # the producer's and consumer's client ids are the ones the client used
    ids = {p["client_id"] for p in pairs if p["api"] in ("Produce", "Fetch")}
    assert gt.producer_client_id in ids and gt.consumer_client_id in ids, ids


FLOOD = r"""
import socket, struct, sys
listener = socket.create_server(("127.0.0.1", 0))
print("listening", flush=True)
sys.stdin.readline()  # connect once the agent is attached
if __import__("os").fork() == 0:  # the client: Kafka-framed requests as fast as loopback takes them
    s = socket.create_connection(listener.getsockname())
    hdr = struct.pack(">hhih", 0, 9, 7, 5) + b"flood"
    frame = struct.pack(">i", 4096) + hdr + b"x" * (4096 - len(hdr))
    while True:
        s.sendall(frame)
conn, _ = listener.accept()
print("flowing", flush=True)
while conn.recv(1 << 20):
    pass
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGINT, signal.SIGINT, signal.SIGTERM],
                         ids=["SIGINT-1", "SIGINT-2", "SIGINT-3", "SIGTERM"])
def test_signal_under_load_ends_trace_cleanly(sig):
    """A stop signal that lands while the ring buffer callback runs must still end the trace cleanly."""
    flood = subprocess.Popen([sys.executable, "-c", FLOOD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    trace = None
    try:
        assert flood.stdout.readline().strip() == "listening"
        trace = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "trace"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert "tracing" in trace.stderr.readline()
        flood.stdin.write("go\n")
        flood.stdin.flush()
        assert flood.stdout.readline().strip() == "flowing"
        time.sleep(1.5)  # events are flowing through the callback now
        trace.send_signal(sig)
        err = trace.communicate(timeout=60)[1]
    finally:
        os.killpg(flood.pid, signal.SIGKILL)
        flood.wait()
        if trace is not None and trace.poll() is None:
            trace.kill()
    assert trace.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "captured" in err and "Kafka connections" in err, err  # the summary line still comes
    print(err)


BAD_CLIENT = r"""
import os, socket, struct, sys, time
port, client_id, mode = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
# ApiVersions v3: request header v2 (client id, no tags), body: software name and version, no tags
body = struct.pack(">hhih", 18, 3, 1, len(client_id)) + client_id + b"\x00" + b"\x05bad1" + b"\x021" + b"\x00"
s.sendall(struct.pack(">i", len(body)) + body)
size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
s.recv(size, socket.MSG_WAITALL)
if mode == "killed":  # announce a 100 kB Produce, send 500 bytes of it, wait to be killed
    head = struct.pack(">hhih", 0, 9, 2, len(client_id)) + client_id
    s.sendall(struct.pack(">i", 100_000) + head + b"\x00" * (500 - len(head)))
    print("sent", flush=True)
    time.sleep(600)
else:  # garbage after a good request, then hang up
    s.sendall(os.urandom(8192))
    print("sent", flush=True)
    s.close()
"""


def test_trace_survives_a_client_killed_mid_frame_and_garbage(kafka_broker, topic_factory, tmp_path):
    """Bad input is normal: a client killed in the middle of a frame and a client that sends garbage after
    a good request leave the agent running and a real client beside them fully traced."""
    topic = topic_factory(partitions=3)
    with TraceCLI() as trace:
        killed = subprocess.Popen([sys.executable, "-c", BAD_CLIENT, str(kafka_broker.port), "killed-mid-frame",
                                   "killed"], stdout=subprocess.PIPE, text=True)
        garbage = subprocess.run([sys.executable, "-c", BAD_CLIENT, str(kafka_broker.port), "garbage-sender",
                                  "garbage"], capture_output=True, text=True, timeout=60)
        assert garbage.stdout.strip() == "sent", garbage.stderr
        assert killed.stdout.readline().strip() == "sent"
        killed.kill()
        killed.wait()
        gt = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "go.jsonl", messages=300, partitions=3)
        assert trace.proc.poll() is None, "the agent must keep running"
    assert_every_offset_traced(trace, gt, "go")
    by_client = {}
    for p in trace.pairs():
        by_client.setdefault(p["client_id"], []).append(p)
    assert [p["api"] for p in by_client.get("garbage-sender", [])][:1] == ["ApiVersions"], by_client.keys()
    # the killed client's ApiVersions was answered; its half-sent Produce is reported cut off, unanswered
    killed = [(p["api"], p["response_ns"] is not None, p.get("request_error"), p.get("response_error"))
              for p in by_client.get("killed-mid-frame", [])]
    assert killed == [("ApiVersions", True, None, None), ("Produce", False, "truncated", "lost")], killed


def test_broker_traffic_is_left_out_unless_asked_and_long_polls_are_in_flight(kafka_broker, topic, tmp_path):
    """A broker's own connections (to its controller: BrokerHeartbeat, ...) are not client traffic; a consumer
    long-polling when the agent stops has its Fetch in flight, not lost."""
    from tests.workloads import start_workload

    broker_pid = kafka_broker.pid
    with start_workload("go", kafka_broker.bootstrap, topic, tmp_path / "c.jsonl", mode="consume", messages=10,
                        timeout_s=60) as consumer:
        with TraceCLI() as plain, TraceCLI("--broker-traffic") as everything:
            time.sleep(7)  # the broker heartbeats its controller every 2 s; the consumer long-polls an empty topic
        consumer.kill()
    assert not [p for p in plain.pairs() if p["pid"] == broker_pid]
    from_broker = [p for p in everything.pairs() if p["pid"] == broker_pid]
    assert "BrokerHeartbeat" in {p["api"] for p in from_broker}, {p["api"] for p in from_broker}
    fetches = [p for p in plain.pairs() if p["pid"] == consumer.pid and p["api"] == "Fetch"]
    assert fetches and fetches[-1].get("in_flight") is True and "response_error" not in fetches[-1]
    assert all(not p.get("in_flight") for p in fetches[:-1])
