"""Capture filters (pid, cgroup, ports), joining connections that predate the agent, and `record`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from otel_kafka_ebpf.capture.loader import CaptureSettings, cgroup2_root
from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.capture.streams import ConnectionOpened, Direction, GapReason, StreamData, StreamGap
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from otel_kafka_ebpf.kafka.versions import PRODUCE
from tests.testbed.agent_capture import BackgroundCapture, declared_skips
from tests.testbed.pcap_oracle import LoopbackCapture
from tests.workloads import GroundTruth, command

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _gated(cmd: list[str], gate, prelude: str = "") -> subprocess.Popen:
    """Start `cmd` once the file `gate` exists, in the same process (exec): its pid is known up front."""
    script = f'{prelude} while [ ! -e "{gate}" ]; do sleep 0.05; done; exec "$@"'
    return subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kafka_pids(capture: BackgroundCapture, port: int) -> set[int]:
    return {c.opened.pid for c in capture.connections().values() if c.opened.remote_port == port}


def test_pid_filter_captures_only_those_processes(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=1)
    opts = dict(bootstrap=kafka_broker.bootstrap, messages=50, partitions=1)
    gate = tmp_path / "go"
    wanted = _gated(command("go", out=str(tmp_path / "a.jsonl"), topic=topic, client_id="wanted", **opts), gate)
    other = _gated(command("go", out=str(tmp_path / "b.jsonl"), topic=topic_factory(partitions=1),
                           client_id="other", **opts), gate)
    with BackgroundCapture(CaptureSettings(pids={wanted.pid})) as capture:
        gate.touch()
        assert wanted.wait(120) == 0 and other.wait(120) == 0
    assert _kafka_pids(capture, kafka_broker.port) == {wanted.pid}


@pytest.mark.skipif(cgroup2_root() is None, reason="needs a cgroup v2 hierarchy")
def test_cgroup_filter_captures_only_that_container(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=1)
    cg = os.path.join(cgroup2_root(), f"oke-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    try:
        opts = dict(bootstrap=kafka_broker.bootstrap, messages=50, partitions=1)
        gate = tmp_path / "go"
        inside = _gated(command("go", out=str(tmp_path / "in.jsonl"), topic=topic, client_id="inside", **opts),
                        gate, prelude=f"echo $$ > {cg}/cgroup.procs;")
        outside = _gated(command("go", out=str(tmp_path / "out.jsonl"), topic=topic_factory(partitions=1),
                                 client_id="outside", **opts), gate)
        with BackgroundCapture(CaptureSettings(cgroup_path=cg)) as capture:
            gate.touch()
            assert inside.wait(120) == 0 and outside.wait(120) == 0
        assert _kafka_pids(capture, kafka_broker.port) == {inside.pid}
    finally:
        os.rmdir(cg)


def test_ports_only_ignores_other_ports(kafka_broker, topic_factory, tmp_path):
    """ports_only with a port nobody uses: the Kafka traffic on the broker's port is not captured."""
    topic = topic_factory(partitions=1)
    settings = CaptureSettings(kafka_ports=(1,), ports_only=True)
    with BackgroundCapture(settings) as capture:
        p = subprocess.run(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=20,
                                   out=str(tmp_path / "g.jsonl")), capture_output=True, timeout=120)
        assert p.returncode == 0
    assert capture.connections() == {}
    assert capture.counters["conn_kafka"] == 0


def test_forced_port_is_kafka_without_detection(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=1)
    settings = CaptureSettings(kafka_ports=(kafka_broker.port,), ports_only=True)
    with BackgroundCapture(settings) as capture:
        p = subprocess.run(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=20,
                                   out=str(tmp_path / "g.jsonl")), capture_output=True, timeout=120)
        assert p.returncode == 0
    assert _kafka_pids(capture, kafka_broker.port) == {p.args and GroundTruth.load(tmp_path / "g.jsonl").pid}
    # connections forced by port are Kafka connections in the counts too
    assert capture.counters["conn_kafka"] >= 2, capture.counters


def test_trace_counts_connections_forced_by_port(kafka_broker, topic_factory, tmp_path):
    """`trace --kafka-port P --ports-only`: the summary counts the Kafka connections it captured."""
    topic = topic_factory(partitions=1)
    agent = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "trace", "--json", "--kafka-port",
                              str(kafka_broker.port), "--ports-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert "tracing" in agent.stderr.readline()
        wl = subprocess.run(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=20,
                                    out=str(tmp_path / "g.jsonl")), capture_output=True, timeout=120)
        assert wl.returncode == 0
    finally:
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=60)
    summary = [line for line in err.splitlines() if "Kafka connections" in line]
    assert summary, err
    connections = int(summary[0].split(" on ")[1].split()[0])
    assert connections >= 2, summary[0]  # the bootstrap connection and the broker's listener
    assert out.count('"api":"Produce"') >= 1


def test_joining_connections_that_predate_the_agent(kafka_broker, topic_factory, tmp_path):
    """A client already running when the agent starts: its streams are captured from the first syscall
    seen, the bytes before are an exact gap, requests resynchronise at once and responses at the answer
    to the first request seen."""
    topic = topic_factory(partitions=1)
    with LoopbackCapture(kafka_broker.port) as pcap:
        proc = subprocess.Popen(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=2500, rate=100,
                                        mode="produce", out=str(tmp_path / "g.jsonl"), linger_ms=0),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(3)  # connections are up and busy before the agent attaches
        with BackgroundCapture(CaptureSettings(mode="full")) as capture:
            assert proc.poll() is None, "the client must still be running when the agent attaches"
            assert proc.wait(120) == 0, proc.stderr.read()
    oracle = pcap.streams()
    joined = [c for c in capture.connections().values()
              if c.opened.pid == proc.pid and c.opened.remote_port == kafka_broker.port]
    assert joined, "the running client's connections were not picked up"
    checked_send = checked_recv = 0
    frame_starts = {Direction.SEND: 0, Direction.RECV: 0}
    for e in capture.events:
        if isinstance(e, StreamData) and e.frame_start:
            frame_starts[e.direction] += 1
    for conn in joined:
        ref = oracle[(conn.opened.local_port, kafka_broker.port)]
        for direction, wire in ((Direction.SEND, bytes(ref.c2s)), (Direction.RECV, bytes(ref.s2c))):
            got, gaps = conn.stream(direction)
            # only a leading gap (bytes before detection), none later
            assert all(off == 0 for off, _ in gaps), f"{direction.name}: gaps after the start {gaps}"
            lead = gaps[0][1] if gaps else 0
            tail = got[lead:]
            if not tail:
                continue
            if direction == Direction.SEND:
                assert wire.endswith(tail), "captured requests are not the wire's last bytes"
                checked_send += len(tail)
            else:
                assert tail in wire, "captured responses are not a slice of the wire"
                checked_recv += len(tail)
    assert checked_send > 10_000 and checked_recv > 1_000
    assert frame_starts[Direction.SEND] > 0 and frame_starts[Direction.RECV] > 0, frame_starts


def test_server_ends_older_than_the_agent_are_not_taken_for_clients(kafka_broker, topic_factory, tmp_path):
    """A broker's Fetch responses to an idle consumer start like a request (small correlation id read as
    api_key 0 / version, zero throttle time and error code read as correlation id and client id length);
    the ports listening when the agent starts tell it which connection ends are servers."""
    topic = topic_factory(partitions=1)
    consumer = subprocess.Popen(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=3,
                                        mode="consume", out=str(tmp_path / "c.jsonl")),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(4)  # long-polling an empty partition before the agent attaches
    with BackgroundCapture() as capture:
        time.sleep(6)  # a few more long polls while attached
        produced = subprocess.run(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=3,
                                          mode="produce", out=str(tmp_path / "p.jsonl")), capture_output=True,
                                  timeout=120)
        assert produced.returncode == 0
        assert consumer.wait(120) == 0, consumer.stderr.read()
    conns = capture.connections().values()
    assert [c for c in conns if c.opened.pid == consumer.pid], "the consumer's own connections must be captured"
    server_ends = [c for c in conns if c.opened.local_port == kafka_broker.port]
    assert not server_ends, "the broker's ends of connections older than the agent were taken for clients"


def test_record_command_writes_a_readable_recording(kafka_broker, topic_factory, tmp_path):
    topic = topic_factory(partitions=1)
    out = tmp_path / "cap.okr"
    agent = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "record", "--out", str(out)],
                             stderr=subprocess.PIPE, text=True)
    first = agent.stderr.readline()  # printed once the programs are attached
    assert "recording to" in first, first
    wl = subprocess.run(command("go", bootstrap=kafka_broker.bootstrap, topic=topic, messages=100,
                                out=str(tmp_path / "g.jsonl")), capture_output=True, timeout=120)
    assert wl.returncode == 0
    agent.send_signal(signal.SIGINT)  # Ctrl-C ends a recording cleanly
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert "Traceback" not in err and "wrote" in err
    gt = GroundTruth.load(tmp_path / "g.jsonl")
    events = list(read_recording(out))
    conns = {e.conn_id for e in events if isinstance(e, ConnectionOpened) and e.pid == gt.pid}
    assert conns
    # a digest: the produced values stayed in the kernel, as declared skips; nothing was lost
    assert not [e for e in events if isinstance(e, StreamGap) and e.conn_id in conns and e.length]
    skips = [s for s in declared_skips(events) if s[0] in conns]
    assert skips and {s[4] for s in skips} == {GapReason.RECORDS_SKIPPED}
    assert sum(s[3] for s in skips) > 100 * 100
    produced = set()
    for pair in KafkaStreamDecoder().feed_all(e for e in events if getattr(e, "conn_id", None) in conns):
        if pair.api_key == PRODUCE and pair.response is not None:
            bases = {r.partition: r.base_offset for r in pair.response.partitions}
            for part in pair.request.partitions:
                n = sum(b.record_count for b in part.batches)
                produced.update((part.partition, bases[part.partition] + i) for i in range(n))
    assert produced == {(r.partition, r.offset) for r in gt.produced}


DUP2_CLIENT = r"""
import os, socket, struct, sys
port, client_id = int(sys.argv[1]), sys.argv[2].encode()
null = os.open("/dev/null", os.O_RDONLY)
os.read(null, 1)  # the agent remembers: this fd number is not a socket
s = socket.create_connection(("127.0.0.1", port))
os.dup2(s.fileno(), null)  # now it names the broker connection
dup = socket.socket(fileno=null)
body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id  # ApiVersions v0
dup.sendall(struct.pack(">i", len(body)) + body)
size = struct.unpack(">i", dup.recv(4, socket.MSG_WAITALL))[0]
dup.recv(size, socket.MSG_WAITALL)
"""


def test_dup2_onto_a_remembered_fd_number_is_still_captured(kafka_broker):
    """dup2 makes an fd number the agent judged 'not a socket' name a Kafka connection; the judgement
    must be forgotten, or the connection's traffic would stay hidden."""
    client_id = f"dup2-{uuid.uuid4().hex[:8]}"
    with BackgroundCapture() as capture:
        proc = subprocess.run([sys.executable, "-c", DUP2_CLIENT, str(kafka_broker.port), client_id],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.5)
    sent = [c.stream(Direction.SEND)[0] for c in capture.connections().values()
            if c.opened.remote_port == kafka_broker.port]
    assert any(client_id.encode() in data for data in sent), "the request sent through the dup2'd fd was not captured"



_IDLE_CLIENT = r"""
import socket, struct, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
print(sock.getsockname()[1], flush=True)
sys.stdin.readline()  # connected and silent until the agent is attached
for correlation_id in (1, 2, 3):
    client_id = b"idle-before-agent"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id  # ApiVersions v0
    sock.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))
    sock.recv(size, socket.MSG_WAITALL)
sock.close()
"""


def test_a_client_that_connected_before_the_agent_and_speaks_after_is_a_client_from_its_first_byte(kafka_broker):
    """A connection the agent never saw open (connected before it started, as after a connect() run the kernel
    skipped): when its first syscall seen sends the stream's first byte, it is a client at the start of both
    streams, whole and without a gap, not a stream joined mid-way."""
    with LoopbackCapture(kafka_broker.port) as pcap:
        client = subprocess.Popen([sys.executable, "-c", _IDLE_CLIENT, str(kafka_broker.port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        local_port = int(client.stdout.readline())
        with BackgroundCapture(CaptureSettings(mode="full")) as capture:
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.wait(60) == 0, client.stderr.read()
            time.sleep(0.5)
    ref = pcap.streams()[(local_port, kafka_broker.port)]
    mine = [c for c in capture.connections().values()
            if c.opened.pid == client.pid and c.opened.local_port == local_port]
    assert len(mine) == 1, capture.connections()
    conn = mine[0]
    assert conn.opened.role.name == "CLIENT"
    for direction, wire in ((Direction.SEND, bytes(ref.c2s)), (Direction.RECV, bytes(ref.s2c))):
        got, gaps = conn.stream(direction)
        assert not gaps, f"{direction.name}: {gaps}"
        assert bytes(got) == wire, f"{direction.name}: {len(got)} bytes captured of {len(wire)}"
