"""Live BPF capture against the real broker and real clients, checked against a tshark loopback capture."""

from __future__ import annotations

import http.server
import os
import struct
import threading
import time

import pytest

from otel_kafka_ebpf.capture.layouts import digest_streams
from otel_kafka_ebpf.capture.loader import CaptureSettings
from otel_kafka_ebpf.capture.streams import (
    ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from otel_kafka_ebpf.kafka.versions import PRODUCE
from tests.testbed.agent_capture import BackgroundCapture, connections_of
from tests.testbed.pcap_oracle import LoopbackCapture
from tests.workloads import CLIENTS, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _frames(buf: bytes) -> list[tuple[int, int]]:
    """(offset, total length incl. size field) of each Kafka frame in a complete stream."""
    out, pos = [], 0
    while pos + 4 <= len(buf):
        (size,) = struct.unpack_from(">i", buf, pos)
        out.append((pos, 4 + size))
        pos += 4 + size
    return out


def _client_conns(capture: BackgroundCapture, pid: int, broker_port: int):
    return [c for c in capture.connections().values()
            if c.opened.pid == pid and c.opened.remote_port == broker_port and c.opened.role == Role.CLIENT]


def _assert_digest_is_the_walk_of_the_wire(conn, ref, client: str) -> int:
    """The kernel's digest of a connection is what the Python twin of its walk makes of the wire's bytes:
    the same bytes copied, the same ranges skipped (record payloads), nothing lost."""
    wire = [ConnectionOpened(1, 0, 0, 0, "", 0, 0, "", 0, "", 0, Role.CLIENT),
            StreamData(1, Direction.SEND, 0, 0, bytes(ref.c2s)), StreamData(1, Direction.RECV, 0, 0, bytes(ref.s2c))]
    expected = connections_of(digest_streams(wire))[1]
    compared = 0
    for direction in (Direction.SEND, Direction.RECV):
        end = conn.end(direction)
        if direction == Direction.RECV:
            # responses the client never read before it closed are not seen: whole trailing frames
            assert end in {off for off, _ in _frames(bytes(ref.s2c))} | {len(ref.s2c)}, f"{client}: RECV ends at {end}"
        else:
            assert end == len(ref.c2s), f"{client}: SEND captured {end} of {len(ref.c2s)} bytes"
        have, want = conn.runs(direction, end), expected.runs(direction, end)
        assert [r[:2] for r in have] == [r[:2] for r in want], f"{client} {direction.name}: runs differ"
        assert have == want, f"{client} {direction.name}: copied bytes or skip reasons differ"
        compared += end
    return compared


@pytest.mark.parametrize("mode", ["full", "digest"])
@pytest.mark.parametrize("client", CLIENTS)
def test_streams_equal_loopback_capture(kafka_broker, topic_factory, tmp_path, client, mode):
    """full: every client connection's streams are the wire's bytes; digest: they are the digest the
    Python twin of the kernel's walk makes of the wire's bytes (headers copied, records skipped)."""
    topic = topic_factory(partitions=3)
    with BackgroundCapture(CaptureSettings(mode=mode)) as capture:
        with LoopbackCapture(kafka_broker.port) as pcap:
            gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"{client}.jsonl",
                              messages=300, partitions=3, size=200, compression="none")
    gt.check_consistent()
    assert pcap.dropped() == 0, pcap.log
    oracle = pcap.streams()
    conns = _client_conns(capture, gt.pid, kafka_broker.port)
    # a client opens a bootstrap connection plus at least one to the broker's advertised listener
    assert len(conns) >= 2, f"{client}: captured connections {[(c.opened.local_port, c.opened.remote_port) for c in conns]}"
    compared = 0
    for conn in conns:
        ref = oracle.get((conn.opened.local_port, kafka_broker.port))
        assert ref is not None, f"{client}: tshark has no record of the connection from port {conn.opened.local_port}"
        if mode == "digest":
            compared += _assert_digest_is_the_walk_of_the_wire(conn, ref, client)
            continue
        for direction, expected in ((Direction.SEND, ref.c2s), (Direction.RECV, ref.s2c)):
            got, gaps = conn.stream(direction)
            expected = bytes(expected)
            assert not gaps, f"{client}: unexpected gaps {gaps} in {direction.name}"
            if direction == Direction.RECV and len(got) < len(expected):
                # responses that reached the socket after the client's last read are never read by the
                # process, so the agent rightly never sees them: they must be whole trailing frames
                assert len(got) in {off for off, _ in _frames(expected)}, \
                    f"{client} RECV: capture ends at {len(got)}, not at a frame boundary of the wire's {len(expected)}"
                expected = expected[:len(got)]
            assert len(got) == len(expected), f"{client} {direction.name}: {len(got)} bytes captured, {len(expected)} on the wire"
            assert got == expected, f"{client} {direction.name}: bytes differ"
            compared += len(expected)
    assert compared > 300 * 200, "the produced and fetched records must be among the compared bytes"
    assert capture.counters["ringbuf_drops"] == 0


def test_budget_gaps_are_exact(kafka_broker, topic_factory, tmp_path):
    """With a small per-frame budget, every frame keeps its first `budget` bytes and the rest is a gap of exact length."""
    budget = 512
    topic = topic_factory(partitions=1)
    with BackgroundCapture(CaptureSettings(frame_budget=budget, mode="full")) as capture:
        with LoopbackCapture(kafka_broker.port) as pcap:
            gt = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "go.jsonl",
                              messages=200, size=1000, partitions=1)
    oracle = pcap.streams()
    conns = _client_conns(capture, gt.pid, kafka_broker.port)
    assert conns
    big_frames = 0
    for conn in conns:
        ref = oracle[(conn.opened.local_port, kafka_broker.port)]
        for direction, expected in ((Direction.SEND, bytes(ref.c2s)), (Direction.RECV, bytes(ref.s2c))):
            got, gaps = conn.stream(direction)
            assert len(got) == len(expected)
            gap_ranges = set(gaps)
            want_gaps = set()
            for off, length in _frames(expected):
                if length > budget:
                    want_gaps.add((off + budget, length - budget))
                    big_frames += 1
                # the captured part of each frame is the wire's bytes
                keep = min(length, budget)
                assert got[off:off + keep] == expected[off:off + keep]
            # adjacent gaps may be reported as one when a frame ends exactly where another's budget ends
            assert _merge(gap_ranges) == _merge(want_gaps), f"{direction.name}: gaps differ"
    assert big_frames > 0, "the workload must produce frames larger than the budget"


def _merge(ranges: set[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for off, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += length
        else:
            out.append([off, length])
    return [tuple(r) for r in out]


def test_non_kafka_traffic_is_not_copied(kafka_broker):
    """HTTP on loopback from this machine is classified not-Kafka and none of its bytes are copied."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    # the client runs in a child process: the agent never traces its own process
    code = (f"import urllib.request\n"
            f"for _ in range(20): urllib.request.urlopen('http://127.0.0.1:{port}/').read()\n")
    try:
        with BackgroundCapture() as capture:
            import subprocess, sys
            subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=60)
    finally:
        server.shutdown()
    http_conns = [c for c in capture.connections().values() if port in (c.opened.remote_port, c.opened.local_port)]
    assert http_conns == []
    assert capture.counters["conn_other"] >= 20  # 20 client connections (and the server's accepted ends)


@pytest.mark.parametrize("mode", ["full", "digest"])
def test_tiny_ring_buffer_counts_drops_and_gaps(kafka_broker, topic_factory, tmp_path, mode):
    """A ring buffer far too small loses events; the loss shows as counted drops and exact gaps."""
    topic = topic_factory(partitions=1)
    # full: 16 KiB fill fast enough; a digest is small: one page, and a reader that dawdles (50 ms
    # every 20 events). Only this broker's connections: other processes' traffic would fill the ring.
    only_ours = dict(kafka_ports=(kafka_broker.port,), ports_only=True, mode=mode, wakeup_bytes=0)
    settings = CaptureSettings(ringbuf_bytes=(16 if mode == "full" else 4) << 10, **only_ours)
    events: list = []

    def dawdle(e) -> None:
        events.append(e)
        if mode == "digest" and len(events) % 20 == 0:
            time.sleep(0.05)

    with BackgroundCapture(settings, on_event=dawdle) as capture:
        capture.events = events
        capture.live.poll_ms = 1000
        with LoopbackCapture(kafka_broker.port) as pcap:
            gt = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "go.jsonl",
                              messages=3000, size=1000, partitions=1, linger_ms=0)
    assert capture.counters["ringbuf_drops"] > 0
    oracle = pcap.streams()
    total_gap = 0
    for conn in _client_conns(capture, gt.pid, kafka_broker.port):
        ref = oracle.get((conn.opened.local_port, kafka_broker.port))
        if ref is None:
            continue
        for direction, expected in ((Direction.SEND, bytes(ref.c2s)), (Direction.RECV, bytes(ref.s2c))):
            got, gaps = conn.stream(direction)
            # never a stream that silently skips: what was captured sits at its true offset
            assert len(got) <= len(expected)
            gapped = bytearray(expected[:len(got)])
            for off, length in gaps:
                gapped[off:off + length] = b"\0" * length
                total_gap += length
            assert got == bytes(gapped)
    assert total_gap > 0
    _decoded_after_loss_is_right(capture, gt, records=mode == "full")


def _decoded_after_loss_is_right(capture: BackgroundCapture, gt, records: bool) -> None:
    """Every Produce the decoder still pairs despite the gaps holds the records the client acknowledged
    at those offsets (their keys, when the records were captured), including Produce requests sent
    after the first loss."""
    truth = {(r.partition, r.offset): r.key for r in gt.produced}
    # only the workload's connections: other processes on the host are captured too
    ids = {c.opened.conn_id for c in capture.connections().values() if c.opened.pid == gt.pid}
    events = [e for e in capture.events if e.conn_id in ids]
    first_gap_ns = min(e.ts_ns for e in events if isinstance(e, StreamGap) and e.length and e.reason.is_loss)
    checked = after_gap = 0
    decoder = KafkaStreamDecoder()
    for pair in decoder.feed_all(events):
        if pair.api_key != PRODUCE or pair.response is None or pair.request is None:
            continue
        conn = decoder.opened.get(pair.conn_id)
        if conn is None or conn.pid != gt.pid:  # another producer on the machine (same keys k0, k1, ...)
            continue
        bases = {r.partition: r.base_offset for r in pair.response.partitions}
        for part in pair.request.partitions:
            offset = bases[part.partition]
            for batch in part.batches:
                if records:
                    for record in batch.records():
                        assert truth.get((part.partition, offset + record.offset_delta)) == record.key.decode()
                        checked += 1
                else:
                    for i in range(batch.record_count):
                        assert (part.partition, offset + i) in truth
                        checked += 1
                offset += batch.record_count
        after_gap += pair.request_ts_ns > first_gap_ns
    assert checked > 0 and after_gap > 0, (checked, after_gap)


def test_server_side_capture_mirrors_the_client_side(kafka_broker, topic_factory, tmp_path):
    """With server_side on, the broker's end of each client connection is captured too: what the broker
    received is what the client sent, and what it sent is what the client received, byte for byte, and
    both ends decode to the same Produce offsets."""
    topic = topic_factory(partitions=3)
    with BackgroundCapture(CaptureSettings(server_side=True, mode="full")) as capture:
        gt = run_workload("go", kafka_broker.bootstrap, topic, tmp_path / "go.jsonl", messages=200, partitions=3)
    conns = capture.connections().values()
    servers = {(c.opened.local_port, c.opened.remote_port): c for c in conns
               if c.opened.role == Role.SERVER and c.opened.local_port == kafka_broker.port}
    clients = _client_conns(capture, gt.pid, kafka_broker.port)
    assert clients and servers
    sendfile_gaps: list[tuple[int, int]] = []
    for client in clients:
        server = servers.get((kafka_broker.port, client.opened.local_port))
        assert server is not None, f"no broker end for client port {client.opened.local_port}"
        for c_dir, s_dir in ((Direction.SEND, Direction.RECV), (Direction.RECV, Direction.SEND)):
            (c_bytes, c_gaps), (s_bytes, s_gaps) = client.stream(c_dir), server.stream(s_dir)
            assert not c_gaps
            common = min(len(c_bytes), len(s_bytes))  # one end may have stopped reading first
            expected = bytearray(c_bytes[:common])
            for off, length in s_gaps:  # the broker sends Fetch records with sendfile(): exact gaps
                expected[off:off + length] = b"\0" * (len(expected[off:off + length]))
            assert common > 0 and s_bytes[:common] == bytes(expected)
            sendfile_gaps.extend(s_gaps)

    def produced(side_conns) -> set[tuple[int, int]]:
        ids = {c.opened.conn_id for c in side_conns}
        out = set()
        for pair in KafkaStreamDecoder().feed_all(capture.events):
            if pair.conn_id in ids and pair.api_key == PRODUCE and pair.response is not None:
                for r in pair.response.partitions:
                    n = sum(b.record_count for p in pair.request.partitions if p.partition == r.partition
                            for b in p.batches)
                    out.update((r.partition, r.base_offset + i) for i in range(n))
        return out

    expected = {(r.partition, r.offset) for r in gt.produced}
    assert produced(clients) == expected
    assert produced(list(servers.values())) == expected
    server_ids = {c.opened.conn_id for c in servers.values()}
    reasons = {e.reason for e in capture.events if isinstance(e, StreamGap) and e.conn_id in server_ids and e.length}
    assert sendfile_gaps and reasons == {GapReason.SENDFILE}, reasons
