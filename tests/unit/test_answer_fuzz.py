"""The agent's own broker answers (live) and their notes in a recording (replay) cross the same decoding
boundary as stream bodies: whatever the bytes, the pipeline counts a bad answer and goes on.

Seeds are real: the Metadata and ListOffsets responses that real clients received in tests/vectors, in the
shape the agent's lookup hands them over (the body after the response header). Each is fed whole, then as
every prefix, with every byte flipped, and with its length fields made long and negative, through both
paths: an Annotation in a replayed recording and an Answer of the live broker lookup.
"""

from __future__ import annotations

import functools

import pytest

from otel_kafka_ebpf.capture.streams import Annotation, Direction
from otel_kafka_ebpf.correlate.clusters import Endpoint
from otel_kafka_ebpf.discovery import METADATA_ANSWER, OFFSETS_ANSWER, Answer
from otel_kafka_ebpf.kafka.headers import read_request_header
from otel_kafka_ebpf.kafka.versions import LIST_OFFSETS, METADATA, response_header_version
from otel_kafka_ebpf.pipeline import Pipeline
from tests.unit.kafka import vectors

KINDS = {METADATA: METADATA_ANSWER, LIST_OFFSETS: OFFSETS_ANSWER}


def _frames(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(stream):
        end = pos + 4 + int.from_bytes(stream[pos:pos + 4], "big")
        out.append(stream[pos + 4:end])
        pos = end
    return out


@functools.lru_cache(maxsize=None)
def seeds() -> dict[int, tuple[int, bytes]]:
    """api key -> (version, response body after its header), the first of each in the vectors."""
    found: dict[int, tuple[int, bytes]] = {}
    for name in vectors.names():
        streams = vectors.streams(name)
        for (conn, direction), stream in streams.items():
            if direction != Direction.SEND:
                continue
            asked = {}
            for frame in _frames(stream):
                header, _ = read_request_header(frame)
                if header.api_key in KINDS and header.api_key not in found:
                    asked[header.correlation_id] = (header.api_key, header.api_version)
            for frame in _frames(streams.get((conn, Direction.RECV), b"")):
                corr = int.from_bytes(frame[:4], "big", signed=True)
                if corr in asked:
                    api, version = asked.pop(corr)
                    skip = 5 if response_header_version(api, version) else 4  # flexible: no tags in practice
                    found.setdefault(api, (version, bytes(frame[skip:])))
        if len(found) == len(KINDS):
            return found
    return found


def _variants(body: bytes):
    yield body
    for n in range(len(body)):
        yield body[:n]
    for i in range(len(body)):
        yield body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
    for i in range(0, max(0, len(body) - 4)):  # length fields anywhere: huge, negative
        for value in (b"\x7f\xff\xff\xff", b"\xff\xff\xff\xfe", b"\x80\x00\x00\x00"):
            yield body[:i] + value + body[i + 4:]


def _pipeline() -> Pipeline:
    return Pipeline(discover_metadata=False, poll_high_watermarks=False)


def test_the_seeds_are_real_and_decode():
    got = seeds()
    assert set(got) == set(KINDS), got.keys()
    for api, (version, body) in got.items():
        p = _pipeline()
        p.feed(Annotation(KINDS[api], 1, {"netns": 1, "addr": "127.0.0.1", "port": 9092, "version": version,
                                          "response": body.hex()}))
        assert p.stats[f"{KINDS[api]}_answers_applied"] == 1, p.stats


def test_the_issue_s_call_returns_and_counts():
    p = _pipeline()
    p.feed(Annotation("metadata", 1, {"netns": 1, "addr": "127.0.0.1", "port": 9092, "version": 12,
                                      "response": "00"}))
    assert p.stats["bad_metadata_answers"] == 1


@pytest.mark.parametrize("api", sorted(KINDS))
def test_damaged_annotations_never_escape(api):
    version, body = seeds()[api]
    p = _pipeline()
    fed = 0
    for variant in _variants(body):
        p.feed(Annotation(KINDS[api], fed, {"netns": 1, "addr": "127.0.0.1", "port": 9092, "version": version,
                                            "response": variant.hex()}))
        fed += 1
    counted = p.stats[f"bad_{KINDS[api]}_answers"] + p.stats[f"{KINDS[api]}_answers_applied"]
    assert counted == fed, p.stats
    assert p.stats[f"bad_{KINDS[api]}_answers"] >= len(body) // 2  # most prefixes are short, and said so


@pytest.mark.parametrize("note", [
    {}, {"netns": "x"}, {"netns": 1e999, "addr": "a", "port": 1, "version": 1, "response": ""},
    {"netns": 1, "addr": "a", "port": 1, "version": None, "response": "00"},
    {"netns": 1, "addr": "a", "port": 1, "version": 1, "response": "zz"},
    {"netns": 1, "addr": "a", "port": 1, "version": 1, "response": 5},
    {"netns": 1, "addr": "a", "port": 1, "version": -7, "response": "00"},
    {"netns": 1, "addr": "a", "port": 1, "version": 1 << 70, "response": "00"},
    [1, 2], "text", None,
])
@pytest.mark.parametrize("kind", [METADATA_ANSWER, OFFSETS_ANSWER])
def test_malformed_notes_are_counted(kind, note):
    p = _pipeline()
    p.feed(Annotation(kind, 1, note))
    assert p.stats["bad_annotations"] + p.stats[f"bad_{kind}_answers"] == 1, p.stats


class _GarbageLookup:
    """The live broker lookup, answering every question with the given bodies."""

    def __init__(self, answers):
        self.answers = list(answers)

    def request(self, endpoint) -> None:
        pass

    def request_offsets(self, endpoint, topics) -> None:
        pass

    def results(self):
        out, self.answers = self.answers, []
        return out

    def note_process(self, netns, pid) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("api", sorted(KINDS))
def test_garbage_broker_answers_never_escape(api):
    version, body = seeds()[api]
    endpoint = Endpoint(1, "127.0.0.1", 9092)
    answers = [Answer(KINDS[api], endpoint, version, v) for v in _variants(body)]
    p = Pipeline(discover_metadata=True, poll_high_watermarks=True)
    p.lookup = _GarbageLookup(answers)
    p._ask_brokers(1)
    counted = p.stats[f"bad_{KINDS[api]}_answers"] + p.stats[f"{KINDS[api]}_answers_applied"]
    assert counted == len(answers), p.stats
