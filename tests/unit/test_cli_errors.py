"""User mistakes end in one line on stderr and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "otel_kafka_ebpf.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, expect", [
    (["replay", "/nonexistent.okr"], "no such recording file"),
    (["replay", "/etc/hostname"], "not a recording file"),
    (["trace", "--kafka-port", "70000"], "not a TCP port: 70000"),
    (["record", "--out", "/tmp/x.okr", "--frame-budget", "1"], "frame_budget"),
    (["trace", "--config", "/nonexistent.toml"], "no such config file"),
])
def test_one_line_errors(args, expect):
    r = _run(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], r.stderr


def test_broken_toml_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture\nframe_budget = 12")
    r = _run("trace", "--config", str(cfg))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "not valid TOML" in r.stderr


def test_unknown_setting_in_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture]\nframe_bugdet = 4096\n")
    r = _run("trace", "--config", str(cfg))
    assert r.returncode != 0 and "capture.frame_bugdet" in r.stderr and "Traceback" not in r.stderr


def test_missing_privilege_is_one_line():
    """Without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN the live capture refuses with the fix, not a traceback."""
    r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                        sys.executable, "-m", "otel_kafka_ebpf.cli", "trace"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "privileges" in r.stderr and "run as root" in r.stderr, r.stderr
