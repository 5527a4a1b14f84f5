"""Faults, with real parts: the test bed's Kafka broker, the real client workloads, and the agent as users run it
(`otel-kafka-ebpf trace --json`, a child process, filtered to the test broker's port so that other traffic on
the machine takes no part). Each fault ends with the agent still running, and everything it reported right or
null (a value it could not see is left out, never guessed):

- the broker restarted mid-traffic (a new cluster on the same port);
- real clients SIGKILLed in the middle of large Produce frames;
- garbage and malformed frames on the Kafka port beside a real client, and pipelined requests reusing one
  correlation id;
- thousands of short-lived connections and processes: the agent's RSS, open fds and BPF maps back where they were;
- a 1 MiB ring buffer under a flood from three clients: losses counted, what is reported still true.

tests/integration/test_trace_live.py has the single killed-mid-frame client and the garbage-after-a-request sender
beside each real client; these go further.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from tests.testbed.agent_cli import TraceCLI, assert_every_offset_traced, assert_right_or_null
from tests.testbed.agent_probe import bpf_hash_maps, map_dump, snapshot
from tests.testbed.kafka import KafkaBroker
from tests.workloads import GroundTruth, run_workload, start_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _agent(port: int, *args: str) -> TraceCLI:
    return TraceCLI("--kafka-port", str(port), "--ports-only", *args)


def _records(*truths: GroundTruth) -> dict[tuple[str, int, int], set[int]]:
    """(topic, partition, offset) -> timestamps (ms) of what the clients were acknowledged or read there."""
    out: dict[tuple[str, int, int], set[int]] = {}
    for gt in truths:
        for r in [*gt.produced, *gt.consumed]:
            if r.offset is not None:
                out.setdefault((r.topic, r.partition, r.offset), set()).add(r.timestamp_ms)
    return out


def _summary(err: str) -> dict[str, int]:
    """The figures of the agent's last line (captured ... lost N events ...)."""
    m = re.search(r"captured (\d+) bytes in (\d+) events .*?lost (\d+) events to a full ring buffer; (\d+) gaps", err)
    assert m, err
    return dict(zip(("bytes", "events", "lost", "gaps"), map(int, m.groups())))


# --- the broker restarted mid-traffic ------------------------------------------------------------------------------

def test_broker_restart_mid_traffic(tmp_path):
    """A client producing across a broker restart (a new cluster, same port): the agent keeps running; what it
    reports for that client is right or null; a client of the new cluster is fully traced, its topic names
    resolved from the new cluster's Metadata (topic ids differ between the two)."""
    broker = KafkaBroker()
    broker.start()
    port = broker.port
    try:
        with _agent(port) as trace:
            before = run_workload("go", broker.bootstrap, broker.create_topic("before-restart", partitions=3),
                                  tmp_path / "before.jsonl", messages=200, partitions=3)
            across = start_workload("confluent", broker.bootstrap, broker.create_topic("across-restart", partitions=1),
                                    tmp_path / "across.jsonl", messages=100_000, rate=100, mode="produce",
                                    timeout_s=60)
            time.sleep(4)
            broker.stop()
            broker = KafkaBroker(port=port)
            broker.start()
            time.sleep(5)  # the producer reconnects to the new cluster
            across.kill()
            after = run_workload("go", broker.bootstrap, broker.create_topic("after-restart", partitions=3),
                                 tmp_path / "after.jsonl", messages=200, partitions=3)
            assert trace.proc.poll() is None, "the agent must keep running"
    finally:
        broker.stop()
    assert_every_offset_traced(trace, before, "go before the restart")
    assert_every_offset_traced(trace, after, "go after the restart")  # by topic name: resolved in the new cluster
    across_gt = GroundTruth.load(tmp_path / "across.jsonl")
    # offsets restart at 0 in the new cluster: the truth is what the client was acknowledged, in either. It was
    # killed: acknowledgements read after the last one its ground truth holds may not be in it (one partition:
    # they come in order), so only the Produce pairs answered up to that one are held against it.
    across_pairs = [p for p in trace.pairs() if p["pid"] == across_gt.pid and p["api"] == "Produce"]
    last = max(across_gt.produced, key=lambda r: r.ack_ns)
    answered_by = [p["response_ns"] for p in across_pairs if p["response_ns"] is not None
                   and p["response_ns"] <= last.ack_ns and any(
                       part["topic"] == last.topic and part["partition"] == last.partition
                       and part.get("base_offset") is not None
                       and part["base_offset"] <= last.offset < part["base_offset"] + (part["record_count"] or 1)
                       for part in p["partitions"])]
    assert answered_by, "the producer's last acknowledged batch is not traced"
    checked = assert_right_or_null([p for p in across_pairs if p["response_ns"] is not None
                                    and p["response_ns"] <= max(answered_by)], _records(across_gt))
    assert checked["produced"] > 0, "the producer across the restart has no traced Produce"


# --- clients SIGKILLed mid-frame -----------------------------------------------------------------------------------

def test_clients_killed_mid_frame(kafka_broker, topic_factory, tmp_path):
    """Producers of ~1 MB frames killed at random moments: the agent keeps running, and every offset and
    timestamp it reports for them is a record the broker holds (read back by a consumer afterwards)."""
    topic = topic_factory(partitions=3)
    rng = random.Random(42)
    killed = []
    with _agent(kafka_broker.port) as trace:
        for i, client in enumerate(("go", "confluent", "go")):
            w = start_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"killed-{i}.jsonl", mode="produce",
                               messages=100_000, size=100_000, rate=150, partitions=3, linger_ms=20,
                               batch_size=1_000_000, timeout_s=60)
            time.sleep(rng.uniform(2.0, 4.0))
            w.kill()
            killed.append(w.pid)
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
        total = sum(consumer.end_offsets([TopicPartition(topic, p) for p in range(3)]).values())
        consumer.close()
        check = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "check.jsonl", mode="consume",
                             messages=total, partitions=3, group=f"check-{topic}", timeout_s=90)
        assert trace.proc.poll() is None, "the agent must keep running"
    assert len(check.consumed) == total > 0
    pairs = [p for p in trace.pairs() if p["pid"] in killed]
    checked = assert_right_or_null(pairs, _records(check))
    assert checked["produced"] > 0, trace.err
    cut = [p for p in pairs if p.get("request_error") == "truncated" or p.get("response_error")]
    print(f"{checked['produced']} produced batches checked; {len(cut)} requests cut off or unanswered by the kills")


# --- garbage and malformed frames beside a real client -------------------------------------------------------------

GARBAGE = r"""
import os, socket, struct, sys
port = int(sys.argv[1])

def conn():
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    return s

def request(api_key, version, corr, client, body=b""):
    cid = client.encode()
    head = struct.pack(">hhih", api_key, version, corr, len(cid)) + cid
    return struct.pack(">i", len(head) + len(body)) + head + body

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf

def read_frame(s):
    return recv_exact(s, struct.unpack(">i", recv_exact(s, 4))[0])

def finish(s):  # until the broker hangs up, or a second of silence
    try:
        s.settimeout(1)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()

# five pipelined ApiVersions requests reusing one correlation id: the broker answers each, in order
s = conn()
s.sendall(b"".join(request(18, 0, 7, "reused-id") for _ in range(5)))
assert [struct.unpack_from(">i", read_frame(s))[0] for _ in range(5)] == [7] * 5
s.close()
for i in range(10):  # bytes with no framing at all
    s = conn(); s.sendall(os.urandom(4096 * (i + 1))); finish(s)
for size in (0x7FFFFFFF, -1, 0, 3):  # size prefixes that lie
    s = conn(); s.sendall(struct.pack(">i", size) + os.urandom(64)); finish(s)
for i in range(10):  # frames of a plausible size holding random bytes
    body = os.urandom(50 + 37 * i)
    s = conn(); s.sendall(struct.pack(">i", len(body)) + body); finish(s)
s = conn(); s.sendall(request(999, 0, 1, "unknown-api")); finish(s)
s = conn(); s.sendall(request(18, 99, 1, "unknown-version")); finish(s)
s = conn(); s.sendall(request(18, 0, 1, "cut-produce")); read_frame(s)  # a good request, then a Produce cut short
s.sendall(struct.pack(">i", 5000) + struct.pack(">hhih", 0, 9, 2, 11) + b"cut-produce\x00" + os.urandom(200)); s.close()
s = conn(); s.sendall(request(18, 0, 1, "garbage-after")); read_frame(s); s.sendall(os.urandom(8192)); finish(s)
print("done", flush=True)
"""


def test_garbage_and_malformed_frames_beside_a_real_client(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=3)
    with _agent(kafka_broker.port) as trace:
        with start_workload("go", kafka_broker.bootstrap, topic, tmp_path / "go.jsonl", messages=300,
                            partitions=3) as real:
            garbage = subprocess.run([sys.executable, "-c", GARBAGE, str(kafka_broker.port)], capture_output=True,
                                     text=True, timeout=120)
            assert garbage.stdout.strip() == "done", garbage.stderr
            gt = real.wait()
        assert trace.proc.poll() is None, "the agent must keep running"
    assert_every_offset_traced(trace, gt, "go beside the garbage")
    by_client: dict[str, list[dict]] = {}
    for p in trace.pairs():
        by_client.setdefault(p["client_id"], []).append(p)
    reused = by_client.get("reused-id", [])
    assert [(p["api"], p["correlation_id"]) for p in reused] == [("ApiVersions", 7)] * 5, reused
    assert all(p["response_ns"] is not None and "response_error" not in p for p in reused), reused
    cut = [(p["api"], p.get("request_error")) for p in by_client.get("cut-produce", [])]
    assert cut == [("ApiVersions", None), ("Produce", "truncated")], cut
    # nothing the garbage connections sent was acknowledged: no Produce offset may be reported for them
    invented = [p for p in trace.pairs() if p["client_id"] not in (gt.producer_client_id, gt.consumer_client_id)
                and any(part.get("base_offset") not in (None, -1) for part in p.get("partitions", []))
                and p["pid"] != gt.pid]
    assert not invented, invented[:3]


# --- connection churn: the agent's resources back where they were --------------------------------------------------

CHURN = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from tests.testbed.kafka import api_versions
port, connections, processes = map(int, sys.argv[1:4])
for _ in range(connections):
    api_versions("127.0.0.1", port, client_id="churn")
children = []
for _ in range(processes):  # short-lived processes, each with a connection and a few other fds
    pid = os.fork()
    if pid == 0:
        api_versions("127.0.0.1", port, client_id="churn-process")
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
print(" ".join(map(str, children)), flush=True)
"""


def _churn(port: int, connections: int, processes: int) -> list[int]:
    r = subprocess.run([sys.executable, "-c", CHURN, str(port), str(connections), str(processes)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def test_connection_churn_leaves_no_growth(kafka_broker):
    """3,000 short-lived connections and 100 short-lived processes: every exchange traced, and afterwards the
    agent's RSS within 10 %, its fds the same, its connection map back to its resting size and no fd verdict of an
    exited process left in the kernel."""
    with _agent(kafka_broker.port) as trace:
        _churn(kafka_broker.port, 200, 10)  # warm-up: imports, caches, allocator arenas
        time.sleep(1)
        maps = bpf_hash_maps(trace.pid)
        verdicts = next(i for i, name in maps.items() if name == "fd_verdicts")
        start = snapshot(trace.pid, maps)
        children = _churn(kafka_broker.port, 3000, 100)
        deadline = time.monotonic() + 30  # the agent sweeps fd verdicts of exited processes every 10 s
        while True:
            end = snapshot(trace.pid, maps)
            left = {e["formatted"]["key"] >> 32 for e in map_dump(verdicts)} & set(children)
            if (end.maps["conns"] <= start.maps["conns"] and not left) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert trace.proc.poll() is None, "the agent must keep running"
    print(f"start {start}\nend   {end}")
    assert end.maps["conns"] <= start.maps["conns"], (start.maps, end.maps)
    assert not left, f"fd verdicts of {len(left)} exited processes left in the kernel"
    assert end.fds == start.fds, (start.fds, end.fds)
    assert end.rss_kb <= start.rss_kb * 1.10, (start.rss_kb, end.rss_kb)
    pairs = [p for p in trace.pairs() if p["client_id"] in ("churn", "churn-process")]
    lost = _summary(trace.err)["lost"]
    answered = sum(1 for p in pairs if p["api"] == "ApiVersions" and p["response_ns"] is not None)
    assert answered >= 3000 + 100 + 200 + 10 - lost, (answered, lost)


# --- a small ring buffer under load --------------------------------------------------------------------------------

def test_small_ring_buffer_under_load(kafka_broker, topic_factory, tmp_path):
    """Three clients as fast as they go, with a 1 MiB ring buffer: losses are counted, and every offset and
    timestamp still reported is the truth."""
    with _agent(kafka_broker.port, "--ringbuf-mb", "1") as trace:
        workloads = [start_workload(client, kafka_broker.bootstrap, topic_factory(partitions=3),
                                    tmp_path / f"{client}-{i}.jsonl", messages=2000, size=20_000, partitions=3,
                                    batch_size=1_000_000, timeout_s=120)
                     for i, client in enumerate(("go", "go", "confluent"))]
        truths = []
        try:
            truths = [w.wait() for w in workloads]
        finally:
            for w in workloads:
                w.kill()
        assert trace.proc.poll() is None, "the agent must keep running"
    figures = _summary(trace.err)
    pairs = [p for p in trace.pairs() if p["pid"] in {gt.pid for gt in truths}]
    checked = assert_right_or_null(pairs, _records(*truths))
    print(f"{figures}; {checked} batches checked")
    assert checked["produced"] > 0 and checked["fetched"] > 0


# --- `record` killed ------------------------------------------------------------------------------------------------

def test_a_killed_record_leaves_a_recording_that_replays_with_a_warning(kafka_broker, topic_factory, tmp_path):
    """`record` SIGKILLed while a client runs: its file is private, replays what it had written (right or null),
    then says in one line that it is damaged, and replay exits 3."""
    out = tmp_path / "killed.okr"
    record = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "record", "--out", str(out),
                               "--kafka-port", str(kafka_broker.port), "--ports-only"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "recording to" in record.stderr.readline()
        gt = run_workload("go", kafka_broker.bootstrap, topic_factory(partitions=3), tmp_path / "go.jsonl",
                          messages=300, partitions=3)
        time.sleep(1.5)  # a second's members reach the disk
    finally:
        record.kill()
        record.wait()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    r = subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", "replay", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    warning = r.stderr.strip().splitlines()
    assert len(warning) == 1 and "damaged recording" in warning[0] and "Traceback" not in r.stderr, r.stderr
    assert "end mark" in warning[0] or "cut short" in warning[0], warning
    pairs = [p for p in map(json.loads, r.stdout.splitlines()) if p["pid"] == gt.pid]
    checked = assert_right_or_null(pairs, _records(gt))
    assert checked["produced"] > 0
    print(warning[0])
