"""`make demo`'s main job runs end to end: broker, backends, a producer and two consumer groups, the agent; the
demo's summaries come from what Jaeger and Prometheus received."""

import os
import re
import socket
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_and_the_backends_show_traces_lag_and_latency():
    r = subprocess.run([sys.executable, "-m", "tests.testbed.demo", "--port", str(_free_port()), "--duration", "45",
                        "--rate", "20", "--every", "5"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "demo: stopped"
    assert any("Jaeger query API" in line for line in lines) and any("Prometheus" in line for line in lines)
    summaries = [line for line in lines if line.startswith("demo: ") and "traces of checkout" in line]
    assert summaries, r.stdout[-3000:]
    last = summaries[-1]
    sent = int(re.search(r"checkout sent (\d+)", last).group(1))
    traces = int(re.search(r"(\d+) traces of checkout", last).group(1))
    assert sent > 200 and traces > 50, last
    for group in ("billing", "shipping"):
        m = re.search(rf"{group}: lag (\d+) (\w+), p99 latency ([\d.]+) ms", last)
        assert m and m.group(2) in ("OK", "WARN") and int(m.group(1)) < 100, last
