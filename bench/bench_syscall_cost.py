"""What the agent costs a process that is not a Kafka client, per syscall, and where it goes.

The raw syscall tracepoints run for every syscall of every process on the node. A non-Kafka load
(dd copying 1-byte blocks: a read and a write per byte) runs detached and attached, in interleaved
pairs; the median difference of dd's CPU time over its syscalls is the cost per syscall. Measured for the agent's own
program and for its pieces (bench/bpf/syscall_cost.bpf.c): attaching at all (empty programs), the
syscall-number test, a hash lookup keyed by pid_tgid, a per-task storage lookup.

    .venv/bin/python bench/bench_syscall_cost.py [--pairs 5] [--count 1000000]

Prints ns per syscall for each and writes bench/results/syscall_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otel_kafka_ebpf.capture.libbpf import lib  # noqa: E402
from otel_kafka_ebpf.capture.loader import CaptureProgram, CaptureSettings  # noqa: E402

PIECES = ROOT / "bench" / ".output" / "syscall_cost.bpf.o"
VARIANTS = {
    "attached, empty programs": ("empty_enter", "empty_exit"),
    "attached, one empty program (exit only)": ("empty_exit",),
    "+ syscall-number test (direct load)": ("nr_enter", "nr_exit"),
    "+ syscall-number test (probe read on exit)": ("nr_enter", "nr_probe_exit"),
    "+ hash lookup by pid_tgid (enter and exit)": ("hash_enter", "hash_exit"),
    "+ per-task storage lookup (enter and exit)": ("task_enter", "task_exit"),
}


class Pieces:
    """The measuring object with only the named programs loaded and attached."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.obj = None
        self.links = []

    def __enter__(self):
        L = lib()
        self.obj = L.bpf_object__open_file(str(PIECES).encode(), None)
        prog = L.bpf_object__next_program(self.obj, None)
        while prog:
            L.bpf_program__set_autoload(prog, L.bpf_program__name(prog).decode() in self.names)
            prog = L.bpf_object__next_program(self.obj, prog)
        L.bpf_object__load(self.obj)
        prog = L.bpf_object__next_program(self.obj, None)
        while prog:
            if L.bpf_program__name(prog).decode() in self.names:
                self.links.append(L.bpf_program__attach(prog))
            prog = L.bpf_object__next_program(self.obj, prog)
        return self

    def __exit__(self, *exc):
        L = lib()
        while self.links:
            L.bpf_link__destroy(self.links.pop())
        L.bpf_object__close(self.obj)


def dd_seconds(count: int) -> float:
    """dd's own CPU time (user + system): the time it waits for a CPU on a busy machine is left out."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"], check=True,
                   capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cost_ns(attach, pairs: int, count: int) -> dict:
    """Median over interleaved (detached, attached) pairs of the extra ns per syscall."""
    deltas, off, on = [], [], []
    for _ in range(pairs):
        a = dd_seconds(count)
        with attach():
            b = dd_seconds(count)
        off.append(a)
        on.append(b)
        deltas.append((b - a) / (2 * count) * 1e9)
    return {"ns_per_syscall": round(statistics.median(deltas), 1), "pairs_ns": [round(d, 1) for d in deltas],
            "detached_s": round(statistics.median(off), 3), "attached_s": round(statistics.median(on), 3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--count", type=int, default=1_000_000, help="bytes dd copies (2 syscalls each)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_syscall_cost: needs root to load BPF programs", file=sys.stderr)
        return 1
    dd_seconds(args.count)  # warm-up
    results = {}
    print(f"non-Kafka syscall cost: dd, 1-byte read+write, {2 * args.count:,} syscalls per run, "
          f"{args.pairs} interleaved detached/attached pairs, median")
    for mode in ("digest", "full"):
        def agent(mode=mode):
            return CaptureProgram(CaptureSettings(mode=mode), lambda e: None)
        r = cost_ns(agent, args.pairs, args.count)
        results[f"agent ({mode})"] = r
        print(f"  agent, {mode:6}: {r['ns_per_syscall']:7.1f} ns per syscall (target <= 100)   pairs {r['pairs_ns']}")
    for name, progs in VARIANTS.items():
        r = cost_ns(lambda progs=progs: Pieces(progs), args.pairs, args.count)
        results[name] = r
        print(f"  {name:45}: {r['ns_per_syscall']:7.1f} ns per syscall   pairs {r['pairs_ns']}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "syscall_cost.json").write_text(json.dumps({
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "syscalls_per_run": 2 * args.count, "pairs": args.pairs, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
