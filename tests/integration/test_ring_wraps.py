"""The ring buffer's reader across many wraps: a steady Kafka-framed load (bench/loadgen.c, real
Produce frames recorded from the Java client) that pushes several hundred MB through the ring with
the full copy. The consumer position crosses a multiple of 16 MiB about twenty times; a reader that
writes it a byte at a time lets the kernel see it a whole ring behind at those moments and refuse
records (a drop or two per run before the fix). Nothing may be lost, every request paired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "bench" / ".output" / "loadgen"

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def test_no_record_lost_across_twenty_ring_wraps(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_decoder import pick_frames

    req, resp = pick_frames("java-plain")["produce"]
    (tmp_path / "req.bin").write_bytes(req)
    (tmp_path / "resp.bin").write_bytes(resp)
    rate, seconds = 5_000, 9
    gate = tmp_path / "gate"
    load = subprocess.Popen(["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.01; done; exec "$@"', "sh",
                             str(LOADGEN), str(tmp_path / "req.bin"), str(tmp_path / "resp.bin"), str(rate),
                             str(seconds), "256"], stdout=subprocess.PIPE, text=True)
    probe = subprocess.Popen([sys.executable, str(ROOT / "bench" / "agent_probe.py"), "--mode", "full",
                              "--pid", str(load.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "ready" in probe.stderr.readline()
        gate.touch()
        requests = int(load.communicate(timeout=120)[0].split()[0])
        time.sleep(0.5)
    finally:
        probe.send_signal(signal.SIGINT)
        out, err = probe.communicate(timeout=120)
        load.kill()
    assert probe.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    counters = summary["counters"]
    wraps = counters["ring_bytes_read"] // (16 << 20)
    assert wraps >= 15, counters  # the load did cross the 16 MiB boundaries this is about
    assert counters["ringbuf_drops"] == 0 and counters["gap_bytes"] == 0, counters
    assert requests >= rate * seconds * 0.95
    assert summary["answered"] == requests, (summary, requests)
