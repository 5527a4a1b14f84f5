"""The BPF object on each kernel of the matrix: what the verifier made of it, and what it cost.

    .venv/bin/python bench/bench_kernels.py [SERIES ...]     # default: 6.1 6.12 sid host

Boots Debian's newest 6.1, 6.12 and sid kernels under QEMU (TCG: times are those of an emulated CPU,
tens of times the host's; compare kernels with each other, not with the host) and runs the host's own
kernel natively, through tests/kernels/matrix.py, the same path as tests/kernels/test_kernel_matrix.py.
Prints, per kernel and capture mode: the exact kernel, whether the walker loaded (else the reason),
instructions the verifier processed per program (and the share of its 1,000,000 limit), verification
time, load seconds, the boot (kernel start to the guest's Python) and whole-run seconds, whether the
traffic was captured whole, and the program runs the kernel skipped (recursion_misses). Results go
to bench/results/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kernels import matrix  # noqa: E402

INSN_LIMIT = 1_000_000  # the verifier's limit of instructions processed per program


def rows(run: dict) -> list[dict]:
    out = []
    for mode, m in run.get("modes", {}).items():
        out.append({
            "series": run["series"], "release": run["kernel"]["release"], "package_version": run["package_version"],
            "mode": mode, "loaded": m["loaded"], "program": m.get("program"), "degraded": m.get("degraded"),
            "reason": m.get("refusal") or m.get("error"), "verifier": m.get("verifier", {}),
            "load_seconds": m.get("load_seconds"), "boot_seconds": run["uptime_at_start"] if run["accel"] == "tcg" else None,
            "run_seconds": round(run["wall_seconds"], 1), "accel": run["accel"],
            "heads_alone": m.get("heads_alone"), "verifier_says": m.get("verifier_says", {}),
            "captured_whole": all(t.get("captured") == t.get("expected") for t in m.get("traffic", {}).values())
            if m.get("traffic") else None,
            "traffic": m.get("traffic"),
            "recursion_misses": sum(t.get("recursion_misses", 0) for t in (m.get("traffic") or {}).values()),
        })
    return out


def print_table(all_rows: list[dict]) -> None:
    head = f"{'kernel':<8} {'release':<22} {'mode':<7} {'loaded':<8} {'program':<15} {'insns processed (of the 1M limit)':<50} " \
           f"{'verify ms':>10} {'load s':>7} {'boot s':>7} {'run s':>6} {'traffic':>8} {'missed':>6}"
    print(head)
    print("-" * len(head))
    for r in all_rows:
        insns = ", ".join(f"{name} {v['insns']} ({100 * v['insns'] / INSN_LIMIT:.1f} %)"
                          for name, v in r["verifier"].items()) or "-"
        verify = sum(v["usec"] for v in r["verifier"].values()) / 1000 if r["verifier"] else None
        loaded = ("degraded" if r["degraded"] else "yes") if r["loaded"] else "no"
        print(f"{r['series']:<8} {r['release']:<22} {r['mode']:<7} {loaded:<8} {r['program'] or '-':<15} {insns:<50} "
              f"{_num(verify, 1):>10} {_num(r['load_seconds'], 2):>7} {_num(r['boot_seconds'], 1):>7} "
              f"{r['run_seconds']:>6.1f} {_whole(r):>8} {r['recursion_misses'] if r['loaded'] else '-':>6}")
        if not r["loaded"] or r["degraded"]:
            print(f"{'':<8} why: {_said(r) or r['reason']}")
            heads = r.get("heads_alone") or {}
            if heads.get("loaded"):
                insns = ", ".join(f"{n} {v['insns']} insns" for n, v in heads.get("verifier", {}).items())
                print(f"{'':<8} the heads program alone loads: {insns}")
            elif heads:
                print(f"{'':<8} the heads program alone is refused too: {_said(heads) or heads.get('error')}")
        elif r["captured_whole"] is False:
            print(f"{'':<8} loaded, but the traffic was not captured whole; the kernel skipped {r['recursion_misses']} "
                  f"runs of the programs (recursion_misses); details in bench/results/kernels.json")


def _whole(r: dict) -> str:
    return {True: "whole", False: "PARTIAL", None: "-"}[r["captured_whole"]]


def _said(entry: dict) -> str:
    return "; ".join(f"{prog}: {line}" for prog, line in (entry.get("verifier_says") or {}).items())


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("series", nargs="*", default=list(matrix.MATRIX))
    args = ap.parse_args()
    started = time.monotonic()
    all_rows, failures = [], []
    for name in args.series:
        try:
            all_rows += rows(matrix.run(name))
        except matrix.KernelError as exc:
            failures.append(f"{name}: {exc}")
    print(f"BPF object on the kernel matrix (QEMU TCG, {matrix.GUEST_CPUS} vCPUs, {matrix.GUEST_MEMORY}; "
          f"host natively); {time.monotonic() - started:.0f} s in all")
    print_table(all_rows)
    for f in failures:
        print(f"no result: {f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "kernels.json").write_text(json.dumps({"rows": all_rows, "failures": failures}, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
