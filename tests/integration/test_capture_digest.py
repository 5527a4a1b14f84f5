"""The digest in the kernel: every layout walked as its Python twin walks it, whatever the syscalls'
sizes; the program loads quickly in every mode."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from otel_kafka_ebpf.capture import layouts as L
from otel_kafka_ebpf.capture.loader import CaptureProgram, CaptureSettings
from otel_kafka_ebpf.capture.streams import Direction, GapReason, Role
from tests.testbed.agent_capture import BackgroundCapture, merge_runs
from tests.testbed.digest_frames import conversation

pytestmark = [pytest.mark.integration, pytest.mark.bpf,
              pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


@pytest.mark.parametrize("settings", [CaptureSettings(mode="digest"), CaptureSettings(mode="full"),
                                      CaptureSettings(mode="digest", record_prefix=512)],
                         ids=["digest", "full", "digest-prefix"])
def test_program_loads_in_every_mode(settings):
    started = time.perf_counter()
    with CaptureProgram(settings, lambda e: None).open() as prog:
        loaded = time.perf_counter() - started
        assert prog.attached == 2 + prog.tls.links  # raw syscall exit, process exit, the TLS probes
    print(f"{settings.mode} (record prefix {settings.record_prefix}): loaded and attached in {loaded:.3f} s")


def _expected_runs(frames, exchanges, is_request: bool) -> list:
    pieces = []
    offset = 0
    for frame, (api, _) in zip(frames, exchanges):
        reason = GapReason.SASL if api in (L.SASL_HANDSHAKE, L.SASL_AUTHENTICATE, "raw") else GapReason.RECORDS_SKIPPED
        pos = 0
        for at, n in frame.skips:
            pieces.append((offset + pos, frame.data[pos:at], None))
            pieces.append((offset + at, n, reason))
            pos = at + n
        pieces.append((offset + pos, frame.data[pos:], None))
        offset += len(frame.data)
    return merge_runs([p for p in pieces if p[1]])


@pytest.mark.parametrize("record_prefix", [0, 100])
@pytest.mark.parametrize("seed", range(int(os.environ.get("OKE_DIGEST_SEEDS", "3"))))
def test_every_layout_is_walked_as_the_generator_laid_it_out(seed, record_prefix, tmp_path):
    """Made-up frames of every layout (Produce v0-13, Fetch v4-18, ShareFetch v0-2, SASL with raw
    tokens), written and read in pieces of 1 byte to 1 MiB: the kernel copies and skips exactly what
    the generator says (the records; SASL bodies) and loses nothing."""
    requests, responses, exchanges = conversation(seed, record_prefix)
    proc = subprocess.Popen([sys.executable, "-m", "tests.testbed.digest_frames", str(seed), str(record_prefix)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with BackgroundCapture(CaptureSettings(pids={proc.pid}, record_prefix=record_prefix)) as capture:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    conns = [c for c in capture.connections().values() if c.opened.pid == proc.pid and c.opened.role == Role.CLIENT]
    assert len(conns) == 1, [c.opened for c in conns]
    conn = conns[0]
    for direction, frames, is_request in ((Direction.SEND, requests, True), (Direction.RECV, responses, False)):
        want = _expected_runs(frames, exchanges, is_request)
        have = conn.runs(direction)
        assert [r[:2] for r in have] == [r[:2] for r in want], f"{direction.name}: runs differ"
        assert have == want, f"{direction.name}: copied bytes or skip reasons differ"
    assert capture.counters["gap_bytes"] == 0 and capture.counters["ringbuf_drops"] == 0
