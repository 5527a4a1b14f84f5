"""`make demo`: a local broker, a demo producer and consumer, and the agent printing what it sees.

Ctrl-C (or --duration) stops everything this started; a broker that was already running is left up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from tests.testbed.kafka import KafkaBroker, api_versions
from tests.workloads import command

TOPIC = "demo-orders"


def _broker_up(port: int) -> bool:
    try:
        api_versions("127.0.0.1", port)
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--port", type=int, default=9092)
    ap.add_argument("--rate", type=int, default=5, help="messages per second")
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("make demo: the agent loads BPF programs; run as root (or see `otel-kafka-ebpf doctor`)", file=sys.stderr)
        return 1
    broker = None
    procs: list[subprocess.Popen] = []
    try:
        if _broker_up(args.port):
            print(f"demo: using the Kafka already on 127.0.0.1:{args.port}")
            bootstrap = f"127.0.0.1:{args.port}"
        else:
            print(f"demo: starting Kafka on 127.0.0.1:{args.port} ...", flush=True)
            broker = KafkaBroker(port=args.port).start()
            bootstrap = broker.bootstrap
        common = dict(messages=10_000_000, rate=args.rate, partitions=3, size=256, timeout_s=10_000_000)
        agent = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "trace", "--kafka-port", str(args.port)])
        procs.append(agent)
        time.sleep(3)  # let the agent attach before the clients connect
        for mode, client_id in (("produce", "demo-producer"), ("consume", "demo-consumer")):
            cmd = command("go", bootstrap=bootstrap, topic=TOPIC, mode=mode, client_id=client_id,
                          group="demo-group", out=os.devnull, **common)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"demo: producer and consumer running on topic {TOPIC} at {args.rate} msg/s; Ctrl-C stops the demo",
              flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            if agent.poll() is not None:
                print(f"demo: the agent exited with status {agent.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if broker is not None:
            broker.stop()
        print("demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
