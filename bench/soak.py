"""Soak: `otel-kafka-ebpf run` attached to an hour of steady Kafka traffic with connection churn.

The four client workloads (java, go, confluent, kafka-python) run in loops against a test-bed broker, each at a
steady message rate (every run is a new process with new connections), and a churner opens and closes short
ApiVersions connections at a steady rate beside them. The agent runs as users deploy it (`run`, exporting spans
and its own metrics as OTLP JSON to a file), filtered to the broker's port. Every minute it prints the agent's RSS,
CPU, open fds, BPF hash map entries and loss (ring-buffer drops, gap bytes, decoder problems, from the agent's own
metrics); at the end, the growth over the run. Results: bench/results/soak.json.

    make soak                       # an hour
    python bench/soak.py --minutes 10

Growth is measured from the first sample after every client finished a run (the agent has seen them all and
filled its caches by then) to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.testbed.agent_probe import bpf_hash_maps, entries_of_exited_processes, snapshot  # noqa: E402
from tests.testbed.kafka import KafkaBroker, api_versions  # noqa: E402
from tests.workloads import CLIENTS, WorkloadError, run_workload  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
LOSS_METRICS = ("otel_kafka_ebpf.capture.lost_events", "otel_kafka_ebpf.capture.gap_bytes")


def _metric_points(line: dict) -> dict[str, int]:
    """name (with attributes) -> value, from one OTLP/JSON metrics request."""
    out = {}
    for rm in line.get("resourceMetrics", []):
        for sm in rm.get("scopeMetrics", []):
            for m in sm.get("metrics", []):
                body = m.get("sum") or m.get("gauge") or {}
                for p in body.get("dataPoints", []):
                    attrs = ",".join(f"{a['key']}={next(iter(a['value'].values()))}" for a in p.get("attributes", []))
                    value = p.get("asInt", p.get("asDouble", 0))
                    out[m["name"] + (f"{{{attrs}}}" if attrs else "")] = int(float(value))
    return out


class Telemetry:
    """The agent's export file: its latest metrics and how many spans it wrote; emptied as it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics: dict[str, int] = {}
        self.span_lines = 0

    def read(self) -> None:
        try:
            with open(self.path, "r+", encoding="utf-8") as fh:
                text = fh.read()
                fh.truncate(0)  # the agent appends (O_APPEND): it goes on at the new end
        except FileNotFoundError:
            return
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:  # a line cut by the truncation race: the next export repeats the counts
                continue
            if "resourceMetrics" in line:
                self.metrics.update(_metric_points(line))
            elif "resourceSpans" in line:
                self.span_lines += 1

    def get(self, prefix: str) -> int:
        return sum(v for k, v in self.metrics.items() if k == prefix or k.startswith(prefix + "{"))


class Traffic:
    """The workloads in loops and the churner, in threads, until stop()."""

    def __init__(self, broker, clients: list[str], rate: float, run_s: float, churn_per_s: float,
                 work_dir: Path) -> None:
        self.broker = broker
        self.clients = clients
        self.rate = rate
        self.run_s = run_s
        self.churn_per_s = churn_per_s
        self.work_dir = work_dir
        self.runs: Counter = Counter()
        self.failures: Counter = Counter()
        self.last_failure: dict[str, str] = {}
        self.churned = 0
        self.churn_errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True, name=f"soak-{c}")
                         for c in clients]
        self._threads.append(threading.Thread(target=self._churn, daemon=True, name="soak-churn"))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)

    def _loop(self, client: str) -> None:
        topic = self.broker.create_topic(f"soak-{client}-{os.getpid()}", partitions=3)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                run_workload(client, self.broker.bootstrap, topic, self.work_dir / f"{client}.jsonl",
                             messages=max(1, int(self.rate * self.run_s)), rate=self.rate, partitions=3,
                             compression="lz4" if client != "java" else "zstd", client_id=f"soak-{client}",
                             timeout_s=self.run_s * 4 + 60)
                self.runs[client] += 1
            except WorkloadError as exc:
                self.failures[client] += 1
                self.last_failure[client] = str(exc).splitlines()[0]
                self._stop.wait(5)

    def _churn(self) -> None:
        interval = 1.0 / self.churn_per_s if self.churn_per_s else None
        next_at = time.monotonic()
        while interval and not self._stop.is_set():
            try:
                api_versions(self.broker.host, self.broker.port, timeout=5.0, client_id="soak-churn")
                self.churned += 1
            except (OSError, ValueError):
                self.churn_errors += 1
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def _growth(first: float, last: float) -> float | None:
    return None if not first else round(100.0 * (last - first) / first, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long to soak (default 60)")
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second per client (default 20)")
    ap.add_argument("--run-s", type=float, default=30.0, help="seconds of producing per workload run (default 30)")
    ap.add_argument("--churn", type=float, default=20.0, help="short connections opened per second (default 20)")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated workloads (default all four)")
    ap.add_argument("--out", default=str(RESULTS), help=f"results file (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: the agent loads BPF programs: run as root", file=sys.stderr)
        return 1
    clients = [c for c in args.clients.split(",") if c]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped from outside: end the agent and clients too
    work = Path(tempfile.mkdtemp(prefix="oke-soak-"))
    export = work / "telemetry.jsonl"
    samples: list[dict] = []
    with KafkaBroker() as broker:
        agent_log = open(work / "agent.stderr", "w+")
        agent = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "run", "--exporter", "file",
                                  "--file-path", str(export), "--kafka-port", str(broker.port), "--ports-only",
                                  "--status-interval", "60"],
                                 stdout=subprocess.DEVNULL, stderr=agent_log, cwd=ROOT)
        traffic = Traffic(broker, clients, args.rate, args.run_s, args.churn, work)
        telemetry = Telemetry(export)
        try:
            deadline = time.monotonic() + 60
            while "exporting Kafka spans" not in (work / "agent.stderr").read_text():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the agent did not start: {(work / 'agent.stderr').read_text()}")
                time.sleep(0.2)
            maps = bpf_hash_maps(agent.pid)
            verdicts = next(i for i, name in maps.items() if name == "fd_verdicts")
            traffic.start()
            t0 = time.monotonic()
            cpu0 = snapshot(agent.pid, {}).cpu_s
            print(f"soak: {args.minutes:g} min, clients {','.join(clients)} at {args.rate:g} msg/s each, "
                  f"{args.churn:g} short connections/s, broker {broker.bootstrap}, agent pid {agent.pid}", flush=True)
            print(f"{'min':>5} {'rss MB':>7} {'cpu %':>6} {'fds':>4}  {'maps (entries)':<60} {'events':>9} "
                  f"{'lost':>5} {'gap B':>7} {'problems':>8} {'spans':>7} {'runs':>5} {'churn':>6}", flush=True)
            minute = 0
            while minute < args.minutes:
                minute += 1
                wait = t0 + 60 * min(minute, args.minutes) - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited ({agent.returncode}): {(work / 'agent.stderr').read_text()}")
                snap = snapshot(agent.pid, maps)
                dead = entries_of_exited_processes(verdicts)
                telemetry.read()
                elapsed = time.monotonic() - t0
                sample = {
                    "minute": round(elapsed / 60, 2), "rss_kb": snap.rss_kb, "cpu_s": round(snap.cpu_s - cpu0, 2),
                    "fds": snap.fds, "maps": snap.maps, "fd_verdicts_of_exited": dead,
                    "events": telemetry.get("otel_kafka_ebpf.capture.events"),
                    "lost_events": telemetry.get("otel_kafka_ebpf.capture.lost_events"),
                    "gap_bytes": telemetry.get("otel_kafka_ebpf.capture.gap_bytes"),
                    "decoder_problems": telemetry.get("otel_kafka_ebpf.decoder.problems"),
                    "spans_built": telemetry.get("otel_kafka_ebpf.spans{state=built}"),
                    "workload_runs": sum(traffic.runs.values()), "workload_failures": sum(traffic.failures.values()),
                    "churned": traffic.churned,
                }
                prev_cpu = samples[-1]["cpu_s"] if samples else 0.0
                prev_t = samples[-1]["minute"] * 60 if samples else 0.0
                sample["cpu_pct"] = round(100 * (sample["cpu_s"] - prev_cpu) / max(1e-9, elapsed - prev_t), 1)
                samples.append(sample)
                maps_text = " ".join(f"{k}={v}" for k, v in snap.maps.items() if k != "listen_ports") + f" (exited {dead})"
                print(f"{sample['minute']:>5.1f} {snap.rss_kb / 1024:>7.1f} {sample['cpu_pct']:>6.1f} {snap.fds:>4}  "
                      f"{maps_text:<60} {sample['events']:>9} {sample['lost_events']:>5} {sample['gap_bytes']:>7} "
                      f"{sample['decoder_problems']:>8} {sample['spans_built']:>7} {sample['workload_runs']:>5} "
                      f"{traffic.churned:>6}", flush=True)
        finally:
            traffic.stop()
            if agent.poll() is None:
                agent.send_signal(signal.SIGINT)
                try:
                    agent.wait(60)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            telemetry.read()
            agent_log.seek(0)
            agent_err = agent_log.read()
            agent_log.close()
    if len(samples) < 1:
        print(f"soak: no sample taken; agent said:\n{agent_err}", file=sys.stderr)
        return 1
    # growth from the first sample after every client finished a run (the agent has seen them all by then)
    first = next((s for s in samples if s["workload_runs"] >= len(clients)), samples[0])
    last = samples[-1]
    summary = {
        "minutes": last["minute"], "baseline_minute": first["minute"], "clients": clients, "rate_per_client": args.rate, "churn_per_s": args.churn,
        "rss_kb_first": first["rss_kb"], "rss_kb_last": last["rss_kb"], "rss_kb_max": max(s["rss_kb"] for s in samples),
        "rss_growth_pct": _growth(first["rss_kb"], last["rss_kb"]),
        "fds_first": first["fds"], "fds_last": last["fds"], "fd_growth": last["fds"] - first["fds"],
        "maps_first": first["maps"], "maps_last": last["maps"],
        "map_growth": {k: last["maps"].get(k, 0) - v for k, v in first["maps"].items()},
        "fd_verdicts_of_exited_max": max(s["fd_verdicts_of_exited"] for s in samples),
        "cpu_pct_mean": round(100 * last["cpu_s"] / max(1e-9, last["minute"] * 60), 1),
        "cpu_pct_first": first["cpu_pct"], "cpu_pct_last": last["cpu_pct"],
        "lost_events": last["lost_events"], "gap_bytes": last["gap_bytes"],
        "decoder_problems": {k: v for k, v in telemetry.metrics.items() if k.startswith("otel_kafka_ebpf.decoder")},
        "events": last["events"], "spans_built": last["spans_built"], "workload_runs": dict(traffic.runs),
        "workload_failures": dict(traffic.failures), "last_failures": traffic.last_failure,
        "churned_connections": traffic.churned, "churn_errors": traffic.churn_errors,
        "agent_exit": agent.returncode, "agent_summary": [l for l in agent_err.splitlines() if "captured" in l][-1:],
    }
    print(f"soak: from minute {first['minute']:.1f} to {summary['minutes']:.1f}: RSS {first['rss_kb'] / 1024:.1f} -> {last['rss_kb'] / 1024:.1f} MB "
          f"({summary['rss_growth_pct']:+.1f} %), fds {first['fds']} -> {last['fds']}, maps "
          + ", ".join(f"{k} {v:+d}" for k, v in summary["map_growth"].items())
          + f" (fd verdicts of exited processes at most {summary['fd_verdicts_of_exited_max']}; the rest are live "
          f"processes' on this host); CPU {first['cpu_pct']} -> {last['cpu_pct']} % of a core (mean "
          f"{summary['cpu_pct_mean']} %); lost {summary['lost_events']} events, "
          f"{summary['gap_bytes']} gap bytes; {summary['workload_runs']} runs "
          f"({summary['workload_failures'] or 'no'} failures), {traffic.churned} churned connections", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
