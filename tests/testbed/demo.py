"""`make demo`: Kafka, a Collector, Jaeger and Prometheus, a producer and two consumer groups, and the agent.

The producer service `checkout` (franz-go) writes to `demo-orders`; the groups `billing` (Java) and
`shipping` (librdkafka, through confluent-kafka) read it. `otel-kafka-ebpf run` watches them from the
kernel and exports spans, metrics and status changes to the Collector (collector-config/agent-gateway.yaml),
which feeds Jaeger (traces) and Prometheus (metrics). The demo prints where to look, then every few
seconds what the backends have: each group's lag and status and p99 latency (Prometheus), the traces
of the producer (Jaeger). Ctrl-C (or --duration) stops everything this started; a broker that was already
running is left up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from tests.testbed.backends import BackendError, OtelBackends, port_open
from tests.testbed.kafka import KafkaBroker, api_versions
from tests.workloads import command

TOPIC = "demo-orders"
PRODUCER = ("checkout", "go")
GROUPS = (("billing", "java"), ("shipping", "confluent"))
DEFAULT_PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "jaeger_ui": 16686, "prometheus": 9090}


def _broker_up(port: int) -> bool:
    try:
        api_versions("127.0.0.1", port)
        return True
    except OSError:
        return False


def _summary(backends: OtelBackends) -> str:
    """What the backends hold now, one line."""
    prom = backends.prometheus
    parts = []
    try:
        sent = prom.query(f'sum(messaging_client_sent_messages_total{{job="{PRODUCER[0]}"}})')
        parts.append(f"{PRODUCER[0]} sent {int(sent[0][1]) if sent else 0}")
        for group, _ in GROUPS:
            lag = prom.query(f'sum(messaging_kafka_consumer_lag{{messaging_consumer_group_name="{group}"}})')
            status = prom.query(f'max(otel_kafka_ebpf_consumer_status{{messaging_consumer_group_name="{group}"}})')
            p99 = prom.query('histogram_quantile(0.99, sum by (le) (rate(otel_kafka_ebpf_message_latency_seconds_'
                             f'bucket{{messaging_consumer_group_name="{group}"}}[30s])))')
            state = ("OK", "WARN", "STALL", "STOP")[int(status[0][1])] if status else "-"
            latency = f"{p99[0][1] * 1000:.1f} ms" if p99 and p99[0][1] == p99[0][1] else "-"
            parts.append(f"{group}: lag {int(lag[0][1]) if lag else '-'} {state}, p99 latency {latency}")
        traces = backends.jaeger.traces(PRODUCER[0], lookback=300, limit=1000)
        parts.append(f"{len(traces)} traces of {PRODUCER[0]} in Jaeger (last 5 min)")
    except (BackendError, OSError, ValueError, IndexError) as exc:
        parts.append(f"(backends not answering yet: {exc})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--port", type=int, default=9092)
    ap.add_argument("--rate", type=int, default=5, help="messages per second")
    ap.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between summaries")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("make demo: the agent loads BPF programs; run as root (or see `otel-kafka-ebpf doctor`)", file=sys.stderr)
        return 1
    broker = backends = None
    procs: list[subprocess.Popen] = []
    try:
        if _broker_up(args.port):
            print(f"demo: using the Kafka already on 127.0.0.1:{args.port}")
            bootstrap = f"127.0.0.1:{args.port}"
        else:
            print(f"demo: starting Kafka on 127.0.0.1:{args.port} ...", flush=True)
            broker = KafkaBroker(port=args.port).start()
            bootstrap = broker.bootstrap
            broker.create_topic(TOPIC, partitions=3)
        ports = {k: v for k, v in DEFAULT_PORTS.items() if not port_open(v)}  # taken ones become free ports
        print("demo: starting the Collector, Jaeger and Prometheus ...", flush=True)
        backends = OtelBackends(ports=ports).start()
        agent = subprocess.Popen([sys.executable, "-m", "otel_kafka_ebpf.cli", "run", "--kafka-port", str(args.port),
                                  "--status-interval", str(max(args.every * 2, 10))],
                                 env={**os.environ, **backends.agent_env()})
        procs.append(agent)
        time.sleep(3)  # let the agent attach before the clients connect
        common = dict(messages=10_000_000, rate=args.rate, partitions=3, size=256, timeout_s=10_000_000,
                      out=os.devnull, bootstrap=bootstrap, topic=TOPIC)
        clients = [("produce", PRODUCER[0], PRODUCER[1], None)] + [("consume", g, c, g) for g, c in GROUPS]
        for mode, service, client, group in clients:
            cmd = command(client, mode=mode, client_id=service, group=group, **common)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, "OTEL_SERVICE_NAME": service}))
        print(f"demo: {PRODUCER[0]} ({PRODUCER[1]}) produces to {TOPIC} at {args.rate} msg/s; groups "
              + ", ".join(f"{g} ({c})" for g, c in GROUPS) + " consume it. Where to look:")
        print("\n".join("  " + line for line in backends.describe().splitlines()))
        print(f"  a trace:   curl -s '{backends.jaeger.query_url}/api/traces?service={PRODUCER[0]}&limit=1'")
        print(f"  lag:       curl -s '{backends.prometheus.url}/api/v1/query?query=messaging_kafka_consumer_lag'")
        print("  live view: otel-kafka-ebpf top   (in another terminal)")
        print("Ctrl-C stops the demo", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        next_summary = time.monotonic() + args.every
        while deadline is None or time.monotonic() < deadline:
            if agent.poll() is not None:
                print(f"demo: the agent exited with status {agent.returncode}", file=sys.stderr)
                return 1
            if time.monotonic() >= next_summary:
                next_summary += args.every
                print(f"demo: {time.strftime('%H:%M:%S')} {_summary(backends)}", flush=True)
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
        if backends is not None:
            backends.close()
        if broker is not None:
            broker.stop()
        print("demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
