"""kafka-python workload, following tests/workloads/CONTRACT.md.

    python tests/workloads/kafkapython_workload.py --bootstrap 127.0.0.1:9092 --topic t --out t.jsonl

kafka-python has no KIP-848 consumer (``--group-protocol consumer`` exits 3). Codecs other than
gzip need their optional Python packages (python-snappy, lz4, zstandard); without one the
workload exits 3 for that codec.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec as kafka_codec
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from tests.workloads import (TimedOut, UnsupportedOption, new_traceparent, pace, record_value,
                             remaining, run_modes, workload_main, handle)

CLIENT = "kafkapython"
VERSION = kafka.__version__
TOPIC_ALREADY_EXISTS = 36
CODEC_AVAILABLE = {
    "none": lambda: True,
    "gzip": kafka_codec.has_gzip,
    "snappy": kafka_codec.has_snappy,
    "lz4": kafka_codec.has_lz4,
    "zstd": kafka_codec.has_zstd,
}
CODEC_PACKAGE = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def security(args) -> dict:
    """--security-protocol, --ca-file and --sasl-user/--sasl-password as kafka-python settings
    (TLS through Python's ssl module, hostnames checked)."""
    conf = {"security_protocol": args.security_protocol}
    if args.ca_file:
        conf["ssl_cafile"] = args.ca_file
    if args.security_protocol.startswith("SASL_"):
        conf.update(sasl_mechanism="PLAIN", sasl_plain_username=args.sasl_user,
                    sasl_plain_password=args.sasl_password)
    return conf


def prepare_topic(args) -> dict[int, int]:
    """Create the topic if missing; return each partition's end offset before this run."""
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id=args.client_id + "-admin",
                             request_timeout_ms=_ms(min(30.0, remaining(args))), **security(args))
    try:
        result = admin.create_topics(
            {args.topic: {"num_partitions": args.partitions, "replication_factor": 1}},
            timeout_ms=_ms(min(30.0, remaining(args))), raise_errors=False)
        for t in result["topics"]:
            if t["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"create topic {t['name']}: error {t['error_code']} "
                                   f"{t.get('error_message')}")
        admin.wait_for_topics([args.topic], timeout_ms=_ms(remaining(args)))
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=args.bootstrap, client_id=args.client_id + "-admin",
                          request_timeout_ms=_ms(min(30.0, remaining(args))), **security(args))
    try:
        while True:
            parts = probe.partitions_for_topic(args.topic)
            if parts:
                ends = probe.end_offsets([TopicPartition(args.topic, p) for p in sorted(parts)],
                                         timeout_ms=_ms(remaining(args)))
                return {tp.partition: off for tp, off in ends.items()}
            if time.monotonic() + 0.1 >= args.deadline:
                raise TimedOut(f"topic {args.topic} has no partitions in metadata")
            time.sleep(0.1)
    finally:
        probe.close()


def produce(args, truth, counts) -> None:
    conf = dict(
        bootstrap_servers=args.bootstrap,
        client_id=args.client_id + "-p",
        compression_type=None if args.compression == "none" else args.compression,
        acks={"0": 0, "1": 1, "all": "all"}[args.acks],
        linger_ms=args.linger_ms,
        batch_size=args.batch_size,
        **security(args),
    )
    if args.transactional:
        conf["transactional_id"] = args.client_id + "-tx"
    else:
        conf["enable_idempotence"] = args.acks == "all"
    producer = KafkaProducer(**conf)
    client_id = conf["client_id"]
    lock = threading.Lock()
    errors: list[str] = []

    def on_ack(md, key: str, send_ns: int, traceparent: str | None) -> None:
        ack_ns = time.time_ns()   # runs on the producer's I/O thread when the response lands
        # acks=0 has no response: kafka-python then reports made-up offsets (-1 + index in
        # batch), so the contract's null is written instead.
        offset = None if args.acks == "0" or md.offset < 0 else md.offset
        ev = dict(client_id=client_id, topic=md.topic, partition=md.partition,
                  offset=offset, timestamp_ms=md.timestamp,
                  send_ns=send_ns, ack_ns=ack_ns, key=key, value_size=md.serialized_value_size)
        if traceparent:
            ev["traceparent"] = traceparent
        truth.write("produce", **ev)
        with lock:
            counts["produced"] += 1

    def on_error(exc, key: str) -> None:
        with lock:
            errors.append(f"{key}: {exc!r}")

    try:
        if args.transactional:
            producer.init_transactions()
            producer.begin_transaction()
        began = time.monotonic()
        for seq in range(args.messages):
            pace(args, began, seq)
            if errors:
                break
            key = f"k{seq}"
            tp = new_traceparent() if args.headers else None
            headers = [("traceparent", tp.encode())] if tp else None
            send_ns = time.time_ns()
            fut = producer.send(args.topic, key=key.encode(), value=record_value(seq, args.size),
                                headers=headers)
            fut.add_callback(on_ack, key=key, send_ns=send_ns, traceparent=tp)
            fut.add_errback(on_error, key=key)
        try:
            producer.flush(timeout=remaining(args))
        except KafkaTimeoutError as e:
            raise TimedOut(f"flush: {e}") from e
        if args.transactional:
            if errors:
                producer.abort_transaction()
            else:
                producer.commit_transaction()
    finally:
        producer.close(timeout=10)
    if errors:
        raise RuntimeError(f"{len(errors)} records not delivered, first: {errors[0]}")
    if counts["produced"] != args.messages:
        raise TimedOut(f"produced {counts['produced']} of {args.messages}")


def consume(args, truth, counts, want: int, start: dict[int, int] | None) -> None:
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        client_id=args.client_id + "-c",
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        isolation_level="read_committed" if args.transactional else "read_uncommitted",
        **({"fetch_max_bytes": args.fetch_max_bytes} if args.fetch_max_bytes else {}),
        **({"max_partition_fetch_bytes": args.max_partition_fetch_bytes} if args.max_partition_fetch_bytes else {}),
        **security(args),
    )
    client_id = args.client_id + "-c"
    try:
        while counts["consumed"] < want:
            batches = consumer.poll(timeout_ms=_ms(min(0.5, remaining(args))))
            consume_ns = time.time_ns()
            for tp, records in batches.items():
                for r in records:
                    if start is not None and r.offset < start.get(tp.partition, 0):
                        continue   # older than this run
                    if counts["consumed"] >= want:
                        break
                    truth.consumed(client_id=client_id, group=args.group, topic=r.topic,
                                   partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp,
                                   consume_ns=consume_ns, key=r.key, headers=r.headers)
                    counts["consumed"] += 1
                    handle(args, counts["consumed"])
            if time.monotonic() >= args.deadline and counts["consumed"] < want:
                raise TimedOut(f"consumed {counts['consumed']} of {want}")
        if want:
            consumer.commit(timeout_ms=_ms(min(10.0, max(1.0, args.deadline - time.monotonic()))))
    finally:
        consumer.close(autocommit=False, timeout_ms=5000)


def work(args, truth, counts) -> None:
    if args.group_protocol == "consumer" and args.mode != "produce":
        raise UnsupportedOption(f"kafka-python {VERSION} has no KIP-848 consumer "
                                "(--group-protocol consumer)")
    if args.transactional and args.acks != "all":
        raise UnsupportedOption("--transactional needs --acks all (idempotent producer)")
    if args.mode != "consume" and not CODEC_AVAILABLE[args.compression]():
        raise UnsupportedOption(f"--compression {args.compression} needs the Python package "
                                f"{CODEC_PACKAGE[args.compression]}, which is not installed")
    run_modes(args, truth, counts, prepare_topic, produce, consume)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    sys.exit(workload_main(CLIENT, VERSION, work))
