"""What the agent says about privileges is true: which of CAP_BPF and CAP_PERFMON is missing, nothing that is not
needed, and a permission problem is never blamed on the kernel. Run as an unprivileged user (setpriv), with each
capability set the agent may meet."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user and capabilities needs root")


def _as_nobody(caps: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI as uid 65534 with exactly `caps` (setpriv syntax: "" for none, "+bpf,+perfmon")."""
    spec = "-all" + ("," + caps if caps else "")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={spec}",
                           f"--ambient-caps={spec}", f"--bounding-set={spec}",
                           sys.executable, "-m", "otel_kafka_ebpf.cli", *args],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def _lines(out: str) -> dict[str, str]:
    """doctor's lines by check name."""
    return {line[5:].split(":", 1)[0]: line for line in out.splitlines() if line[:4] in ("ok  ", "FAIL", "warn")}


@pytest.mark.parametrize("caps, missing", [("", "missing CAP_BPF and CAP_PERFMON:"),
                                           ("+bpf", "missing CAP_PERFMON (CAP_BPF is present)"),
                                           ("+perfmon", "missing CAP_BPF (CAP_PERFMON is present)")])
def test_doctor_names_the_missing_capability_and_blames_no_kernel(caps, missing):
    r = _as_nobody(caps, "doctor")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = _lines(r.stdout)
    assert lines["privileges"].startswith("FAIL") and missing in lines["privileges"], lines["privileges"]
    assert "ptrace" not in lines["privileges"].lower()  # not needed to capture
    for check in ("bpf syscall", "ring buffer maps"):  # without CAP_BPF these fail, as a permission problem
        line = lines[check]
        if "+bpf" in caps:
            assert line.startswith("ok"), line
        else:
            assert "permission problem, not the kernel" in line and "Linux 5.8" not in line, line
    assert lines["kernel version"].startswith("ok")


def test_doctor_with_both_capabilities_says_the_agent_can_run():
    r = _as_nobody("+bpf,+perfmon", "doctor")
    assert r.returncode == 0, r.stdout
    lines = _lines(r.stdout)
    assert lines["privileges"] == "ok   privileges: CAP_BPF and CAP_PERFMON present"
    # what `run` reads beyond the capture is optional, and said as such
    assert lines["process details"].startswith("warn") and "CAP_SYS_PTRACE" in lines["process details"]


@pytest.mark.parametrize("caps, missing", [("+bpf", "missing CAP_PERFMON (CAP_BPF is present)"),
                                           ("+perfmon", "missing CAP_BPF (CAP_PERFMON is present)")])
def test_a_live_command_refuses_in_one_line_naming_the_missing_capability(caps, missing):
    r = _as_nobody(caps, "trace")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and missing in r.stderr and "ptrace" not in r.stderr.lower(), r.stderr


@pytest.mark.bpf
def test_both_capabilities_are_enough_to_capture():
    r = _as_nobody("+bpf,+perfmon", "trace", "--kafka-port", "1", "--ports-only", "--duration", "1")
    assert r.returncode == 0, r.stderr
    assert "captured 0 bytes" in r.stderr, r.stderr
