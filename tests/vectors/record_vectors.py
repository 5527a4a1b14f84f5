"""Re-record the decoder's test vectors from real traffic.

Starts the real broker (tests/testbed/kafka.py) behind the recording proxy, runs each client
workload (tests/workloads) through it, and writes for each scenario ``NAME.rec.gz`` (the
recording: every byte between the client and the broker) and ``NAME.jsonl`` (the workload's own
ground truth), plus ``manifest.json`` (options, client and broker versions).

    .venv/bin/python -m tests.vectors.record_vectors [--only java-plain,go-zstd-3p] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from otel_kafka_ebpf.capture.recording import RecordingWriter
from tests.testbed.kafka import KAFKA_VERSION, KafkaBroker
from tests.testbed.recording_proxy import RecordingProxy
from tests.workloads import CLIENTS, GroundTruth, Unsupported, run_workload, start_workload

HERE = Path(__file__).resolve().parent


def scenarios() -> list[tuple[str, str, dict]]:
    """(name, client, workload options); every client runs every scenario it supports."""
    out = []
    for client in CLIENTS:
        out.append((f"{client}-plain", client, dict(partitions=1, messages=40, headers=True)))
        for codec in ("gzip", "snappy", "lz4", "zstd"):
            out.append((f"{client}-{codec}-3p", client, dict(partitions=3, messages=60, compression=codec)))
        out.append((f"{client}-many-12p", client, dict(partitions=12, messages=120, linger_ms=20)))
        out.append((f"{client}-tx", client, dict(partitions=2, messages=40, transactional=True)))
        out.append((f"{client}-kip848", client, dict(partitions=2, messages=40, group_protocol="consumer")))
        out.append((f"{client}-acks0", client, dict(partitions=1, messages=30, acks="0")))
    # A consumer running while a slow producer writes: fetch sessions turn incremental (KIP-227).
    out.append(("java-live-6p", "java", dict(partitions=6, messages=60, rate=30, concurrent=True)))
    out.append(("go-live-6p", "go", dict(partitions=6, messages=60, rate=30, concurrent=True)))
    return out


def run_concurrent(client: str, bootstrap: str, topic: str, truth: Path, options: dict):
    """Consumer first, then a rate-limited producer; one ground truth with both sides' events."""
    opts = {k: v for k, v in options.items() if k != "concurrent"}
    consumer = start_workload(client, bootstrap, topic, truth.with_suffix(".consumer.jsonl"), mode="consume",
                              timeout_s=90, **opts)
    try:
        time.sleep(4)  # let it join the group and start fetching
        produced = run_workload(client, bootstrap, topic, truth.with_suffix(".producer.jsonl"), mode="produce",
                                timeout_s=90, **opts)
        consumed = consumer.wait()
    finally:
        consumer.kill()
    lines = [ln for ln in truth.with_suffix(".producer.jsonl").read_text().splitlines()
             if '"event":"produce"' in ln.replace(" ", "")]
    cons = truth.with_suffix(".consumer.jsonl").read_text().splitlines()
    truth.write_text("\n".join(cons[:1] + lines + cons[1:]) + "\n")
    for suffix in (".consumer.jsonl", ".producer.jsonl"):
        truth.with_suffix(suffix).unlink()
        Path(str(truth.with_suffix(suffix)) + ".stderr").unlink(missing_ok=True)
    gt = GroundTruth.load(truth)
    assert len(gt.produced) == len(produced.produced) and len(gt.consumed) == len(consumed.consumed)
    return gt


def record_share(proxy: RecordingProxy, broker: KafkaBroker, out_dir: Path) -> None:
    """KIP-932 share group: the Java workload produces, Kafka's console share consumer consumes
    through the proxy. Kept in share/: ``java-share.rec.gz`` (the consumer's traffic only),
    ``java-share.jsonl`` (the producer's ground truth), ``java-share.console.txt`` (the consumer's
    own output: partition, offset, key, value per record)."""
    out_dir = out_dir / "share"
    out_dir.mkdir(exist_ok=True)
    topic, group = "v-java-share", "v-java-share-group"
    broker.create_topic(topic, partitions=2)
    run_workload("java", f"127.0.0.1:{proxy.port}", topic, out_dir / "java-share.jsonl", partitions=2,
                 messages=30, mode="produce")
    Path(str(out_dir / "java-share.jsonl") + ".stderr").unlink(missing_ok=True)
    broker.run_tool("kafka-configs", "--bootstrap-server", broker.direct_bootstrap, "--alter", "--entity-type",
                    "groups", "--entity-name", group, "--add-config", "share.auto.offset.reset=earliest", check=True)
    proxy.wait_idle(15)
    proxy.take_events()
    res = broker.run_tool("kafka-console-share-consumer", "--bootstrap-server", f"127.0.0.1:{proxy.port}",
                          "--topic", topic, "--group", group, "--max-messages", "30", "--timeout-ms", "30000",
                          "--property", "print.offset=true", "--property", "print.partition=true",
                          "--property", "print.key=true", timeout=120, check=True)
    proxy.wait_idle(15)
    with RecordingWriter(out_dir / "java-share.rec.gz", source="recording_proxy",
                         extra={"scenario": "java-share"}) as writer:
        writer.write_all(proxy.take_events())
    (out_dir / "java-share.console.txt").write_text(res.stdout)
    print("java-share: recorded", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--out", default=str(HERE), help="output directory (default: tests/vectors)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    todo = [s for s in scenarios() if only is None or s[0] in only]
    share = only is None or "java-share" in only
    with RecordingProxy() as proxy:
        with KafkaBroker(advertised_port=proxy.port) as broker:
            proxy.target = ("127.0.0.1", broker.port)
            for name, client, options in todo:
                topic = f"v-{name}"
                broker.create_topic(topic, partitions=options["partitions"])
                proxy.take_events()
                truth = out_dir / f"{name}.jsonl"
                began = time.monotonic()
                try:
                    if options.get("concurrent"):
                        gt = run_concurrent(client, f"127.0.0.1:{proxy.port}", topic, truth, options)
                    else:
                        gt = run_workload(client, f"127.0.0.1:{proxy.port}", topic, truth, timeout_s=90,
                                          **options)
                except Unsupported as exc:
                    print(f"{name}: unsupported by {client}: {str(exc).splitlines()[0]}", flush=True)
                    truth.unlink(missing_ok=True)
                    manifest.pop(name, None)
                    continue
                finally:
                    Path(str(truth) + ".stderr").unlink(missing_ok=True)
                proxy.wait_idle(15)
                events = proxy.take_events()
                with RecordingWriter(out_dir / f"{name}.rec.gz", source="recording_proxy",
                                     extra={"scenario": name}) as writer:
                    writer.write_all(events)
                manifest[name] = {"client": client, "client_version": gt.version, "broker": KAFKA_VERSION,
                                  "topic": topic, "options": options, "produced": len(gt.produced),
                                  "consumed": len(gt.consumed)}
                print(f"{name}: {len(events)} events, {len(gt.produced)} produced, {len(gt.consumed)} consumed, "
                      f"{time.monotonic() - began:.1f}s", flush=True)
            if share:
                record_share(proxy, broker, out_dir)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
