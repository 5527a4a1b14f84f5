"""The agent's cost, digest capture and full copy side by side, agent on vs off in the same run.

    .venv/bin/python bench/bench_agent.py [--pairs 5] [--quick]

Prints, for each capture mode:
- bytes copied to user space per record, and as a share of the wire bytes (1 KiB records through a
  real broker: Kafka's ProducerPerformance, then ConsumerPerformance catching up);
- the agent's CPU at a steady 10,000 Kafka requests/s (bench/loadgen.c: Produce requests and their
  responses over loopback), in cores and per request, all stages to the decoded pair;
- the highest request rate with zero loss, the agent on one core;
- the agent's peak RSS;
- ProducerPerformance and ConsumerPerformance throughput and CPU with the agent attached against
  detached: interleaved rounds (detached, digest, full, in turn), medians of the ratios.
The agent here is bench/agent_probe.py (live capture + decoder). Results: bench/results/agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_decoder import pick_frames  # noqa: E402
from tests.testbed.kafka import KafkaBroker, classpath  # noqa: E402

LOADGEN = ROOT / "bench" / ".output" / "loadgen"
MODES = ("digest", "full")
TICK = os.sysconf("SC_CLK_TCK")


class Probe:
    """bench/agent_probe.py in a child process, optionally pinned to one CPU."""

    def __init__(self, mode: str, *args: str, cpu: int | None = None):
        cmd = [sys.executable, str(ROOT / "bench" / "agent_probe.py"), "--mode", mode, *args]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.mode = mode
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "ready" not in line:
            raise RuntimeError(f"agent probe did not start: {line}{self.proc.stderr.read()}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"agent probe failed: {err[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])


def gated(cmd: list[str], gate: Path, cpu: int | None = None) -> subprocess.Popen:
    """Start `cmd` once `gate` exists, in the same process: its pid is known before it runs."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    script = f'while [ ! -e "{gate}" ]; do sleep 0.01; done; exec "$@"'
    return subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=subprocess.PIPE, text=True)


def loadgen_run(frames: tuple[Path, Path], rate: int, seconds: float, mode: str | None, tmp: Path,
                probe_cpu: int | None = None, load_cpu: int | None = None) -> dict:
    """loadgen at `rate` requests/s, with an agent probe in `mode` watching only it (None: detached)."""
    gate = tmp / f"gate-{time.monotonic_ns()}"
    lg = gated([str(LOADGEN), str(frames[0]), str(frames[1]), str(rate), str(seconds), "256"], gate, load_cpu)
    probe = Probe(mode, "--pid", str(lg.pid), cpu=probe_cpu) if mode else None
    cpu0 = probe.cpu_seconds() if probe else 0.0
    t0 = time.monotonic()
    gate.touch()
    out = lg.communicate()[0].split()
    wall = time.monotonic() - t0
    cpu1 = probe.cpu_seconds() if probe else 0.0
    result = {"requests": int(out[0]), "seconds": float(out[1]), "load_cpu_s": float(out[2]), "wall_s": wall}
    if probe:
        summary = probe.stop()
        result.update(agent_cpu_s=cpu1 - cpu0, pairs=summary["answered"], drops=summary["counters"]["ringbuf_drops"],
                      gap_bytes=summary["counters"]["gap_bytes"], peak_rss_kib=summary["peak_rss_kib"],
                      ring_bytes=summary["counters"].get("ring_bytes_read", 0),
                      wakeups=summary["counters"].get("reader_wakeups", 0))
    gate.unlink(missing_ok=True)
    return result


def java(main: str, *args: str) -> list[str]:
    return ["java", "-Xmx512m", "-cp", classpath(), main, *args]


def timed(cmd: list[str]) -> tuple[str, float]:
    """(stdout, the child's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def perf_round(broker, topic: str, records: int, mode: str | None, round_no: int) -> dict:
    probe = Probe(mode, "--kafka-port", str(broker.port)) if mode else None
    try:
        out, p_cpu = timed(java("org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records",
                                str(records), "--record-size", "1024", "--throughput", "-1", "--producer-props",
                                f"bootstrap.servers={broker.bootstrap}"))
        produced = float(re.findall(r"([\d.]+) records/sec", out)[-1])
        out, c_cpu = timed(java("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", broker.bootstrap,
                                "--topic", topic, "--num-records", str(records), "--timeout", "60000",
                                "--group", f"bench-{mode}-{round_no}-{time.monotonic_ns()}", "--hide-header"))
        fields = [f.strip() for f in out.strip().splitlines()[-1].split(",")]
        consumed = float(fields[9])  # fetch.nMsg.sec: records/s while fetching (not the group join)
    finally:
        summary = probe.stop() if probe else None
    r = {"producer_records_per_s": produced, "producer_cpu_s": p_cpu, "consumer_records_per_s": consumed,
         "consumer_cpu_s": c_cpu}
    if summary:
        r.update(ring_bytes=summary["counters"].get("ring_bytes_read", 0), wire_bytes=summary["wire_bytes"],
                 drops=summary["counters"]["ringbuf_drops"], peak_rss_kib=summary["peak_rss_kib"],
                 pairs=summary["pairs"])
    return r


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5, help="interleaved rounds of the perf tools (>= 5)")
    ap.add_argument("--records", type=int, default=100_000, help="1 KiB records per perf tool run")
    ap.add_argument("--quick", action="store_true", help="shorter runs, for a look")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_agent: needs root to load the BPF program", file=sys.stderr)
        return 1
    steady_s = 4 if args.quick else 10
    results: dict = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                                 "python": platform.python_version(), "cpu": _cpu_model()}}
    with tempfile.TemporaryDirectory(prefix="oke-bench-") as tmp_name:
        tmp = Path(tmp_name)
        req, resp = pick_frames("java-plain")["produce"]
        frames = (tmp / "req.bin", tmp / "resp.bin")
        frames[0].write_bytes(req)
        frames[1].write_bytes(resp)
        print(f"agent bench on {results['machine']['cpu']} ({os.cpu_count()} CPUs), kernel {platform.release()}")

        # steady 10,000 requests/s: agent CPU per request, all stages to the decoded pair
        steady: dict = {m: [] for m in MODES}
        for i in range(3):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                steady[mode].append(loadgen_run(frames, 10_000, steady_s, mode, tmp))
        results["steady_10k"] = steady
        print(f"steady load: {len(req)} B Produce requests and {len(resp)} B responses, 10,000/s for {steady_s} s "
              "(bench/loadgen.c), agent = capture + decoder (median of 3)")
        for mode in MODES:
            runs = steady[mode]
            cores = median([r["agent_cpu_s"] / r["seconds"] for r in runs])
            per_req = median([r["agent_cpu_s"] / r["requests"] * 1e6 for r in runs])
            ok = all(r["drops"] == 0 and r["pairs"] == r["requests"] for r in runs)
            print(f"  {mode:6}: {cores:.3f} cores (target <= 0.1), {per_req:5.1f} us per request (target <= 10); "
                  f"every request decoded, no loss: {ok}; ring {median([r['ring_bytes'] / r['requests'] for r in runs]):.0f} "
                  f"B per request")

        # highest zero-loss rate, the agent on one CPU, the load on the other
        results["max_rate"] = {}
        print("highest request rate with zero loss, the agent on one core (5 s per rate):")
        for mode in MODES:
            best = None
            tried = []
            for rate in (10_000, 20_000, 30_000, 40_000, 50_000, 70_000, 100_000):
                r = loadgen_run(frames, rate, 3 if args.quick else 5, mode, tmp, probe_cpu=1, load_cpu=0)
                achieved = r["requests"] / r["seconds"]
                loss_free = r["drops"] == 0 and r["pairs"] == r["requests"]
                tried.append({"rate": rate, "achieved": achieved, "loss_free": loss_free, **r})
                if not loss_free:
                    break
                best = achieved
                if achieved < rate * 0.9:  # the load generator's own limit on its core
                    break
            results["max_rate"][mode] = {"best_loss_free_per_s": best, "runs": tried}
            print(f"  {mode:6}: {best or 0:,.0f} requests/s loss-free (target >= 50,000); tried "
                  + ", ".join(f"{t['rate']:,}->{t['achieved']:,.0f}/s{'' if t['loss_free'] else ' LOSS'}" for t in tried))

        # the perf tools through a real broker: bytes per record, the clients' cost, agent attached vs detached
        with KafkaBroker() as broker:
            topic = broker.create_topic("bench", partitions=6)
            rounds: dict = {"detached": [], "digest": [], "full": []}
            order = ["detached", "digest", "full"]
            perf_round(broker, topic, args.records, None, -1)  # warm-up: the topic holds the records from here on
            for i in range(args.pairs):
                for mode in order[i % 3:] + order[:i % 3]:
                    rounds[mode].append(perf_round(broker, topic, args.records, None if mode == "detached" else mode, i))
        results["perf_tools"] = rounds
        print(f"Kafka's ProducerPerformance + ConsumerPerformance, {args.records:,} records of 1 KiB each, "
              f"6 partitions, {args.pairs} interleaved rounds (median of per-round ratios against detached):")
        base = rounds["detached"]
        for mode in MODES:
            runs = rounds[mode]
            ratio = {k: median([r[k] / b[k] for r, b in zip(runs, base)])
                     for k in ("producer_records_per_s", "consumer_records_per_s", "producer_cpu_s", "consumer_cpu_s")}
            per_record = median([r["ring_bytes"] / (2 * args.records) for r in runs])
            share = median([r["ring_bytes"] / r["wire_bytes"] for r in runs])
            results.setdefault("summary", {})[mode] = {"perf_ratios": ratio, "ring_bytes_per_record": per_record,
                                                       "ring_share_of_wire": share}
            print(f"  {mode:6}: producer throughput x{ratio['producer_records_per_s']:.3f}, CPU x{ratio['producer_cpu_s']:.3f}; "
                  f"consumer throughput x{ratio['consumer_records_per_s']:.3f}, CPU x{ratio['consumer_cpu_s']:.3f} "
                  f"(target: >= x0.99 throughput); user space got {per_record:.1f} B per record = "
                  f"{share * 100:.2f}% of the wire (target < 2%); drops {sum(r['drops'] for r in runs)}")
        for mode in MODES:
            peak = max([r.get("peak_rss_kib", 0) for r in rounds[mode]]
                       + [r.get("peak_rss_kib", 0) for r in steady[mode]]
                       + [r.get("peak_rss_kib", 0) for r in results["max_rate"][mode]["runs"]]) / 1024
            results["summary"][mode]["peak_rss_mib"] = peak
            print(f"  {mode:6}: agent peak RSS {peak:.0f} MiB (target <= 100)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "agent.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
