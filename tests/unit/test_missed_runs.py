"""Runs of the capture's programs the kernel skipped (recursion_misses): read, counted and said once."""

import io

from otel_kafka_ebpf.capture import loader
from otel_kafka_ebpf.capture.live import missed_runs_line
from otel_kafka_ebpf.capture.loader import CaptureProgram, CaptureSettings, recursion_misses

# /proc/<pid>/fdinfo of a tracing program on 7.2 (the field exists since 5.12)
FDINFO_7 = """pos:\t0
flags:\t02000002
mnt_id:\t16
ino:\t1057
prog_type:\t26
prog_jited:\t1
prog_tag:\t6a3b2b0a4bb7a1c5
memlock:\t49152
prog_id:\t412
run_time_ns:\t0
run_cnt:\t0
recursion_misses:\t157
verified_insns:\t41210
"""
FDINFO_5_10 = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t6a3b2b0a4bb7a1c5\nmemlock:\t49152\n" \
              "prog_id:\t412\n"


def test_recursion_misses_from_fdinfo():
    assert recursion_misses(FDINFO_7) == 157


def test_a_kernel_without_the_field_counts_none():
    assert recursion_misses(FDINFO_5_10) == 0


def test_missed_runs_sums_the_attached_programs(monkeypatch):
    prog = CaptureProgram(CaptureSettings(), on_event=lambda e: None)
    assert prog.missed_runs() == 0  # nothing attached
    files = {"/proc/self/fdinfo/7": FDINFO_7, "/proc/self/fdinfo/8": FDINFO_7.replace("157", "3"),
             "/proc/self/fdinfo/9": FDINFO_5_10}

    def fdinfo(path):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(loader, "open", fdinfo, raising=False)  # the loader's fdinfo reads only
    prog._prog_fds = [7, 8, 9, 10]  # 10: closed under us, counts nothing
    assert prog.missed_runs() == 160


def test_the_line_says_what_was_skipped_and_where_it_shows():
    line = missed_runs_line(5)
    assert "\n" not in line
    assert "5 run(s)" in line and "recursion_misses" in line and "MISSED_RUN" in line
