"""Every prefix and single-byte mutation of every recorded frame decodes or fails with DecodeError.

Fixtures are the real frames of tests/vectors: one request and its response for each
(api, version, client) seen. A decoder may accept a mutated frame (a changed offset is still an
offset) but may never raise anything else, and must give the same answer twice.
"""

from __future__ import annotations

import pytest

from otel_kafka_ebpf.capture.streams import Direction
from otel_kafka_ebpf.kafka import DecodeError, UnsupportedApi
from otel_kafka_ebpf.kafka.apis import decode_request_body, decode_response_body
from otel_kafka_ebpf.kafka.headers import read_request_header, read_response_correlation_id, response_body_position
from otel_kafka_ebpf.kafka.versions import api_name, response_header_version
from tests.unit.kafka import vectors


def _fixtures() -> list[tuple[str, int, int, bytes, bytes]]:
    """(id, api_key, version, request payload, response payload), one per (api, version, client)."""
    seen = {}
    sources = [(name, vectors.manifest()[name]["client"]) for name in sorted(vectors.names())]
    for name, client in sources + [("share/java-share", "java-share")]:
        streams = vectors.streams(name)
        for (conn, direction), stream in streams.items():
            if direction != Direction.SEND:
                continue
            responses = {read_response_correlation_id(f): f
                         for f in vectors.frames(streams.get((conn, Direction.RECV), b""))}
            for req in vectors.frames(stream):
                header, _ = read_request_header(req)
                key = (header.api_key, header.api_version, client)
                resp = responses.get(header.correlation_id)
                if key in seen or resp is None:
                    continue
                try:
                    decode_request_body(header.api_key, header.api_version, req, _)
                except UnsupportedApi:
                    continue
                seen[key] = (f"{api_name(header.api_key)}-v{header.api_version}-{client}",
                             header.api_key, header.api_version, req, resp)
    return sorted(seen.values())


FIXTURES = _fixtures()


def _records(message) -> list:
    """Records of every batch in a message (decompressed), or the declared error per batch."""
    out = []
    for part in getattr(message, "partitions", None) or ():
        for batch in getattr(part, "batches", None) or ():
            try:
                out.append(batch.records())
            except DecodeError:
                out.append(DecodeError)
    return out


def _decode_request(frame: bytes):
    try:
        header, pos = read_request_header(frame)
        message = decode_request_body(header.api_key, header.api_version, frame, pos)
        return header, message, _records(message)
    except DecodeError as exc:  # UnsupportedApi included: a mutated api key or version
        return type(exc)


def _decode_response(api_key: int, version: int, frame: bytes):
    try:
        pos = response_body_position(frame, response_header_version(api_key, version))
        message = decode_response_body(api_key, version, frame, pos)
        return read_response_correlation_id(frame), message, _records(message)
    except DecodeError as exc:
        return type(exc)


def _mutations(frame: bytes):
    for i in range(len(frame)):
        yield frame[:i]  # every prefix
        for flip in (0xFF, 0x80, 0x01):  # sign, varint continuation, low bit
            yield frame[:i] + bytes([frame[i] ^ flip]) + frame[i + 1:]


def test_fixtures_cover_the_hot_path_and_every_decoded_api():
    apis = {api for _, api, _, _, _ in FIXTURES}
    assert {0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 68, 78, 79} <= apis
    assert len(FIXTURES) > 40


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_request_mutations_decode_or_fail_declared(fixture):
    _, api_key, version, request, _ = fixture
    intact = _decode_request(request)
    assert isinstance(intact, tuple), "the recorded frame itself decodes"
    failures = 0
    for mutated in _mutations(request):
        first = _decode_request(mutated)  # anything but DecodeError propagates and fails the test
        assert first == _decode_request(mutated)
        failures += not isinstance(first, tuple)
    assert failures > 0  # truncations at least must be detected


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_response_mutations_decode_or_fail_declared(fixture):
    _, api_key, version, _, response = fixture
    intact = _decode_response(api_key, version, response)
    assert isinstance(intact, tuple), "the recorded frame itself decodes"
    failures = 0
    for mutated in _mutations(response):
        first = _decode_response(api_key, version, mutated)
        assert first == _decode_response(api_key, version, mutated)
        failures += not isinstance(first, tuple)
    assert failures > 0
