"""`make demo`'s main job runs end to end: broker, demo producer and consumer, agent output in the terminal."""

import os
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


def test_demo_runs_and_shows_produce_and_fetch():
    r = subprocess.run([sys.executable, "-m", "tests.testbed.demo", "--port", str(_free_port()), "--duration", "25",
                        "--rate", "20"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert any("Produce" in line and "demo-orders" in line for line in lines), r.stdout[-3000:]
    assert any("Fetch" in line and "demo-orders" in line for line in lines), r.stdout[-3000:]
    assert lines[-1] == "demo: stopped"
