"""The object `make bpf` builds loads, attaches to syscall tracepoints, counts real events, and detaches cleanly."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from otel_kafka_ebpf.capture.loader import CaptureError, CaptureProgram, CaptureSettings
from otel_kafka_ebpf.doctor import doctor

pytestmark = [pytest.mark.bpf, pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]


def _our_links() -> int:
    """BPF links (and their programs and maps) held open by this process."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target == "anon_inode:bpf_link"
    return n


def _our_bpf_objects() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:bpf")
        except OSError:
            pass
    return n


def test_loads_attaches_and_counts_real_events():
    before = _our_links()
    seen = []
    with CaptureProgram(CaptureSettings(), seen.append).open() as prog:
        assert prog.attached == 2 + prog.tls.links  # raw syscall exit, process exit, the TLS probes
        assert prog.tls.links > 0  # the system's libssl
        assert _our_links() == before + prog.attached
        # a child process talks over loopback TCP: the tracepoints fire for it
        srv = socket.create_server(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        threading.Thread(target=lambda: [c.recv(100) for c, _ in [srv.accept()]], daemon=True).start()
        subprocess.run([sys.executable, "-c",
                        f"import socket; s=socket.create_connection(('127.0.0.1',{port})); s.send(b'GET / HTTP/1.0\\r\\n\\r\\n')"],
                       check=True, timeout=30)
        for _ in range(5):
            prog.poll(50)
        counters = prog.counters()
    assert counters["tracepoint_hits"] > 0
    assert counters["conn_other"] >= 1  # the HTTP-looking connection was judged not Kafka
    assert _our_links() == before, "links leaked after close()"
    assert _our_bpf_objects() == 0, "programs or maps leaked after close()"


def test_detaches_on_exception():
    before = _our_links()
    with pytest.raises(RuntimeError):
        with CaptureProgram(CaptureSettings(), lambda e: None).open():
            assert _our_links() > before
            raise RuntimeError("boom")
    assert _our_links() == before


def test_bad_cgroup_is_a_clear_error():
    with pytest.raises(CaptureError, match="cgroup /nonexistent"):
        CaptureProgram(CaptureSettings(cgroup_path="/nonexistent"), lambda e: None).open()


def test_doctor_on_this_machine(capsys):
    assert doctor(sys.stdout) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("agent can run")
    assert all(line.startswith(("ok ", "warn")) for line in out[:-1])
