"""The agent as the benchmarks measure it: the live capture and the decoder, to the decoded pairs.

    python bench/agent_probe.py --mode digest [--pid PID] [--kafka-port PORT]

Prints "ready" on stderr once attached; on SIGINT or SIGTERM it stops, drains, and prints one JSON
object on stdout: pairs decoded, the kernel's counters, the bytes read from the ring buffer, the
wire bytes the connections moved, and its peak RSS. Its CPU time is read from /proc by the caller.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otel_kafka_ebpf.capture.live import LiveCapture  # noqa: E402
from otel_kafka_ebpf.capture.loader import CaptureSettings  # noqa: E402
from otel_kafka_ebpf.capture.streams import StreamData, StreamGap  # noqa: E402
from otel_kafka_ebpf.kafka import KafkaStreamDecoder  # noqa: E402


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("digest", "full"), default="digest")
    ap.add_argument("--pid", type=int, action="append", default=[])
    ap.add_argument("--kafka-port", type=int, action="append", default=[])
    ap.add_argument("--frame-budget", type=int, default=1 << 20)
    ap.add_argument("--wakeup-bytes", type=int, default=None)
    args = ap.parse_args()
    settings = CaptureSettings(mode=args.mode, pids=set(args.pid), kafka_ports=tuple(args.kafka_port),
                               ports_only=bool(args.kafka_port), frame_budget=args.frame_budget,
                               wakeup_bytes=args.wakeup_bytes)
    live = LiveCapture(settings, on_ready=lambda: print("ready", file=sys.stderr, flush=True), drain_s=10)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: live.stop())
    decoder = KafkaStreamDecoder()
    pairs = answered = 0
    wire = 0
    for event in live:
        kind = type(event)
        if kind is StreamData:
            wire += event.wire_length
        elif kind is StreamGap:
            wire += event.length
        for pair in decoder.feed(event):
            pairs += 1
            answered += pair.response is not None
    for pair in decoder.finish():
        pairs += 1
    summary = decoder.summary()
    print(json.dumps({"pairs": pairs, "answered": answered, "wire_bytes": wire, "counters": live.counters,
                      "decoder": {k: v for k, v in summary.items() if k.startswith(("malformed", "lost", "truncated"))},
                      "peak_rss_kib": peak_rss_kib()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
