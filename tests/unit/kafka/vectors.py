"""Access to the recorded test vectors (tests/vectors) for the decoder's tests and benchmark."""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path

from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.capture.streams import Direction, StreamData
from otel_kafka_ebpf.correlate.topics import TopicRegistry
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from otel_kafka_ebpf.kafka.headers import read_request_header
from otel_kafka_ebpf.kafka.versions import METADATA
from tests.workloads import GroundTruth

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def manifest() -> dict:
    return json.loads((VECTORS / "manifest.json").read_text())


def names(predicate=lambda name, entry: True) -> list[str]:
    return [name for name, entry in manifest().items() if predicate(name, entry)]


@functools.lru_cache(maxsize=None)
def events(name: str) -> tuple:
    return tuple(read_recording(VECTORS / f"{name}.rec.gz"))


@functools.lru_cache(maxsize=None)
def truth(name: str) -> GroundTruth:
    return GroundTruth.load(VECTORS / f"{name}.jsonl")


def decode(evts) -> tuple[list, KafkaStreamDecoder]:
    decoder = KafkaStreamDecoder()
    pairs = []
    for event in evts:
        pairs.extend(decoder.feed(event))
    pairs.extend(decoder.finish())
    return pairs, decoder


def topic_registry(pairs) -> TopicRegistry:
    registry = TopicRegistry()
    for pair in pairs:
        if pair.api_key == METADATA and pair.response is not None:
            registry.observe_metadata(pair.response)
    return registry


def streams(name: str) -> dict[tuple[int, Direction], bytes]:
    """The whole byte stream of each (connection, direction) of a vector."""
    out: dict[tuple[int, Direction], bytearray] = defaultdict(bytearray)
    for event in events(name):
        if isinstance(event, StreamData):
            buf = out[(event.conn_id, event.direction)]
            assert event.offset == len(buf), "recordings of the proxy have no gaps"
            buf += event.data
    return {k: bytes(v) for k, v in out.items()}


def frames(stream: bytes) -> list[bytes]:
    """The frame payloads of a complete stream (size prefixes stripped)."""
    out = []
    pos = 0
    while pos + 4 <= len(stream):
        size = int.from_bytes(stream[pos:pos + 4], "big", signed=True)
        out.append(stream[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


def request_frames(name: str) -> list[tuple[bytes, int, int]]:
    """(payload, api_key, api_version) of every request frame in a vector."""
    out = []
    for (conn, direction), stream in streams(name).items():
        if direction == Direction.SEND:
            for payload in frames(stream):
                header, _ = read_request_header(payload)
                out.append((payload, header.api_key, header.api_version))
    return out
