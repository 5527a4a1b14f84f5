"""`otel-kafka-ebpf trace --json` beside each real client: every produced offset appears in a Produce pair
and every consumed offset in a Fetch pair's batches, as the client's own ground truth says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.workloads import CLIENTS, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


class TraceCLI:
    """`otel-kafka-ebpf trace --json` in a child process, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "trace", "--json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "TraceCLI":
        first = self.proc.stderr.readline()  # printed once the BPF programs are attached
        assert "tracing" in first, first + self.proc.stderr.read()
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.out, self.err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, self.err
        assert "Traceback" not in self.err, self.err

    def pairs(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def _covered(offset: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= offset <= hi for lo, hi in ranges)


@pytest.mark.parametrize("client", CLIENTS)
def test_trace_reports_every_produced_and_consumed_offset(kafka_broker, topic_factory, tmp_path, client):
    topic = topic_factory(partitions=3)
    with TraceCLI() as trace:
        gt = run_workload(client, kafka_broker.bootstrap, topic, tmp_path / f"{client}.jsonl",
                          messages=300, partitions=3, size=100, compression="lz4" if client != "java" else "zstd")
    gt.check_consistent()
    pairs = [p for p in trace.pairs() if p.get("pid") == gt.pid]
    assert pairs, f"no pairs for pid {gt.pid}; stderr: {trace.err}"
    for p in pairs:
        for key in ("api", "version", "client_id", "correlation_id", "request_ns", "server"):
            assert key in p, (key, p)
    produced_ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    fetched_ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for p in pairs:
        for part in p.get("partitions", []):
            key = (part.get("topic"), part.get("partition"))
            if p["api"] == "Produce" and part.get("base_offset", -1) >= 0:
                produced_ranges.setdefault(key, []).append(
                    (part["base_offset"], part["base_offset"] + part["record_count"] - 1))
            elif p["api"] == "Fetch":
                for b in part.get("batches", []):
                    fetched_ranges.setdefault(key, []).append((b["base_offset"], b["last_offset"]))
    missing_produced = [(r.topic, r.partition, r.offset) for r in gt.produced
                        if not _covered(r.offset, produced_ranges.get((r.topic, r.partition), []))]
    missing_consumed = [(r.topic, r.partition, r.offset) for r in gt.consumed
                        if not _covered(r.offset, fetched_ranges.get((r.topic, r.partition), []))]
    assert not missing_produced, f"{client}: {len(missing_produced)} produced offsets not traced, e.g. {missing_produced[:5]}"
    assert not missing_consumed, f"{client}: {len(missing_consumed)} consumed offsets not traced, e.g. {missing_consumed[:5]}"
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
