"""librdkafka workload (confluent-kafka), following tests/workloads/CONTRACT.md.

    python tests/workloads/confluent_workload.py --bootstrap 127.0.0.1:9092 --topic t --out t.jsonl
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tests.workloads import (TimedOut, UnsupportedOption, new_traceparent, pace, record_value,
                             remaining, run_modes, workload_main, handle)

CLIENT = "confluent"
VERSION = f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"


def security(args) -> dict:
    """--security-protocol, --ca-file and --sasl-user/--sasl-password as librdkafka settings."""
    conf = {"security.protocol": args.security_protocol}
    if args.ca_file:
        conf["ssl.ca.location"] = args.ca_file
    if args.security_protocol.startswith("SASL_"):
        conf.update({"sasl.mechanisms": "PLAIN", "sasl.username": args.sasl_user,
                     "sasl.password": args.sasl_password})
    return conf


def prepare_topic(args) -> dict[int, int]:
    """Create the topic if missing; return each partition's end offset before this run."""
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "client.id": args.client_id + "-admin",
                         **security(args)})
    fut = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions,
                                        replication_factor=1)],
                              operation_timeout=min(30.0, remaining(args)))[args.topic]
    try:
        fut.result(timeout=remaining(args))
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    last_error: Exception | None = None
    while True:
        remaining(args)
        try:
            md = admin.list_topics(args.topic, timeout=min(5.0, remaining(args)))
            tmd = md.topics[args.topic]
            if tmd.error is not None:
                raise KafkaException(tmd.error)
            tps = [TopicPartition(args.topic, p) for p in sorted(tmd.partitions)]
            if tps:
                futs = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                          request_timeout=min(5.0, remaining(args)))
                return {tp.partition: f.result().offset for tp, f in futs.items()}
        except KafkaException as e:
            last_error = e
        if time.monotonic() + 0.1 >= args.deadline:
            raise TimedOut(f"topic {args.topic} not ready: {last_error}")
        time.sleep(0.1)


def produce(args, truth, counts) -> None:
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": args.client_id + "-p",
        "compression.type": args.compression,
        "acks": args.acks,
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_size,
        **security(args),
    }
    if args.transactional:
        conf["transactional.id"] = args.client_id + "-tx"
    producer = Producer(conf)
    client_id = conf["client.id"]
    errors: list[str] = []

    def delivered(err, msg, key: str, send_ns: int, traceparent: str | None) -> None:
        ack_ns = time.time_ns()
        if err is not None:
            errors.append(f"{key}: {err}")
            return
        offset = msg.offset()   # None (or OFFSET_INVALID) when acks=0: no response
        if args.acks == "0" or offset is None or offset < 0:
            offset = None
        ev = dict(client_id=client_id, topic=msg.topic(), partition=msg.partition(),
                  offset=offset, timestamp_ms=msg.timestamp()[1],
                  send_ns=send_ns, ack_ns=ack_ns, key=key, value_size=len(msg.value()))
        if traceparent:
            ev["traceparent"] = traceparent
        truth.write("produce", **ev)
        counts["produced"] += 1   # callbacks run in this thread (poll/flush)

    if args.transactional:
        producer.init_transactions(remaining(args))
        producer.begin_transaction()
    began = time.monotonic()
    for seq in range(args.messages):
        pace(args, began, seq)
        key = f"k{seq}"
        tp = new_traceparent() if args.headers else None
        headers = [("traceparent", tp.encode())] if tp else None
        while True:
            send_ns = time.time_ns()
            try:
                producer.produce(args.topic, key=key.encode(), value=record_value(seq, args.size),
                                 headers=headers,
                                 on_delivery=lambda err, msg, k=key, s=send_ns, t=tp:
                                 delivered(err, msg, k, s, t))
                break
            except BufferError:   # local queue full: serve delivery reports, then retry
                producer.poll(min(0.1, remaining(args)))
        producer.poll(0)
        if errors:
            break
    while producer.flush(min(1.0, remaining(args))) > 0 and not errors:
        pass
    if args.transactional:
        if errors:
            producer.abort_transaction(10)
        else:
            producer.commit_transaction(remaining(args))
    if errors:
        raise RuntimeError(f"{len(errors)} records not delivered, first: {errors[0]}")
    if counts["produced"] != args.messages:
        raise TimedOut(f"produced {counts['produced']} of {args.messages}")


def consume(args, truth, counts, want: int, start: dict[int, int] | None) -> None:
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": args.client_id + "-c",
        "group.id": args.group,
        "group.protocol": args.group_protocol,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "isolation.level": "read_committed" if args.transactional else "read_uncommitted",
        **security(args),
    }
    # librdkafka raises fetch.max.bytes to at least max.partition.fetch.bytes (its fetch.message.max.bytes), and
    # wants it at least message.max.bytes (at least 1000)
    if args.fetch_max_bytes:
        if args.fetch_max_bytes < 1000:
            raise UnsupportedOption("librdkafka's fetch.max.bytes is at least message.max.bytes, at least 1000")
        conf["fetch.max.bytes"] = args.fetch_max_bytes
        conf["message.max.bytes"] = min(args.fetch_max_bytes, 1_000_000)
    if args.max_partition_fetch_bytes:
        conf["max.partition.fetch.bytes"] = args.max_partition_fetch_bytes
    consumer = Consumer(conf)
    client_id = conf["client.id"]
    try:
        consumer.subscribe([args.topic])
        while counts["consumed"] < want:
            # the first message as soon as it is there, then whatever else is queued already
            first = consumer.poll(timeout=min(0.5, remaining(args)))
            consume_ns = time.time_ns()
            msgs = [] if first is None else [first] + consumer.consume(num_messages=499, timeout=0)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal() or not err.retriable():
                        raise KafkaException(err)
                    continue
                if start is not None and msg.offset() < start.get(msg.partition(), 0):
                    continue   # older than this run
                if counts["consumed"] >= want:
                    break
                truth.consumed(client_id=client_id, group=args.group, topic=msg.topic(),
                               partition=msg.partition(), offset=msg.offset(),
                               timestamp_ms=msg.timestamp()[1], consume_ns=consume_ns,
                               key=msg.key(), headers=msg.headers())
                counts["consumed"] += 1
                handle(args, counts["consumed"])
            if time.monotonic() >= args.deadline and counts["consumed"] < want:
                raise TimedOut(f"consumed {counts['consumed']} of {want}")
        if want:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:   # already auto-committed
                    raise
    finally:
        consumer.close()


def work(args, truth, counts) -> None:
    if args.transactional and args.acks != "all":
        raise UnsupportedOption("--transactional needs --acks all (idempotent producer)")
    run_modes(args, truth, counts, prepare_topic, produce, consume)


if __name__ == "__main__":
    sys.exit(workload_main(CLIENT, VERSION, work))
