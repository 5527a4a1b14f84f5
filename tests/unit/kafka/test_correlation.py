"""Responses are matched to requests by correlation id, and by order where ids repeat (Kafka answers the requests
of a connection in the order they were sent)."""

import struct

import pytest

from otel_kafka_ebpf.capture.streams import Direction, StreamData, StreamGap, GapReason
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from otel_kafka_ebpf.kafka.connection import IN_FLIGHT, LOST


def _api_versions_request(corr: int, client: bytes = b"dup-client") -> bytes:
    body = struct.pack(">hhih", 18, 0, corr, len(client)) + client  # ApiVersions v0: header only
    return struct.pack(">i", len(body)) + body


def _api_versions_response(corr: int, max_produce: int) -> bytes:
    """A v0 response whose one range tells the responses apart."""
    body = struct.pack(">ihi", corr, 0, 1) + struct.pack(">hhh", 0, 0, max_produce)
    return struct.pack(">i", len(body)) + body


def _decode(sent: list[bytes], received: list[bytes], gap_after: int | None = None):
    decoder = KafkaStreamDecoder()
    pairs, offset = [], 0
    send = b"".join(sent)
    pairs += decoder.feed(StreamData(1, Direction.SEND, 1, 0, send))
    for i, response in enumerate(received):
        if gap_after is not None and i == gap_after:  # this response's bytes were not captured
            pairs += decoder.feed(StreamGap(1, Direction.RECV, 2 + i, offset, len(response), GapReason.RINGBUF_FULL))
        else:
            pairs += decoder.feed(StreamData(1, Direction.RECV, 2 + i, offset, response))
        offset += len(response)
    pairs += decoder.finish()
    return pairs, decoder.summary()


def test_five_pipelined_requests_reusing_one_id_are_paired_in_order():
    pairs, stats = _decode([_api_versions_request(7) for _ in range(5)],
                           [_api_versions_response(7, i) for i in range(5)])
    assert len(pairs) == 5
    assert [p.response.api_keys[0].max_version for p in pairs] == [0, 1, 2, 3, 4]  # each its own response
    assert all(p.response_error is None and p.correlation_id == 7 for p in pairs)
    assert stats["unmatched_responses"] == 0 and stats["lost_responses"] == 0, stats


def test_reused_ids_among_distinct_ones():
    ids = [1, 2, 2, 3, 2, 2, 4]
    pairs, stats = _decode([_api_versions_request(c) for c in ids],
                           [_api_versions_response(c, i) for i, c in enumerate(ids)])
    assert [(p.correlation_id, p.response.api_keys[0].max_version) for p in pairs] == list(zip(ids, range(7)))
    assert not stats["unmatched_responses"] and not stats["lost_responses"]


def test_a_lost_response_among_reused_ids_makes_their_responses_unknown_not_wrong():
    """The third response falls in a gap. Which request each later response answers is unknown (the gap may have
    held any number of them), so none is paired: their responses are null, never another request's."""
    pairs, stats = _decode([_api_versions_request(7) for _ in range(5)],
                           [_api_versions_response(7, i) for i in range(5)], gap_after=2)
    assert [p.response.api_keys[0].max_version for p in pairs if p.response is not None] == [0, 1]
    assert [p.response_error for p in pairs if p.response is None] == [LOST, LOST, IN_FLIGHT]
    assert stats["ambiguous_responses"] == 2  # the two after the gap; the last request is left waiting


def test_distinct_ids_after_a_gap_are_still_paired():
    ids = [7, 7, 8, 9]
    pairs, stats = _decode([_api_versions_request(c) for c in ids],
                           [_api_versions_response(c, i) for i, c in enumerate(ids)], gap_after=1)
    answered = {p.correlation_id: p.response.api_keys[0].max_version for p in pairs if p.response is not None}
    assert answered == {7: 0, 8: 2, 9: 3}  # the second 7's response was in the gap


def test_a_request_gap_between_reused_ids_makes_them_unknown():
    """A gap in the requests may hide a request with the same id as those around it: the responses of the visible
    ones can no longer be told apart from the hidden one's."""
    decoder = KafkaStreamDecoder()
    first, hidden, second = (_api_versions_request(7) for _ in range(3))
    pairs = decoder.feed(StreamData(1, Direction.SEND, 1, 0, first))
    pairs += decoder.feed(StreamGap(1, Direction.SEND, 2, len(first), len(hidden), GapReason.RINGBUF_FULL))
    # the kernel marks where the next frame starts: the decoder takes it up at once
    pairs += decoder.feed(StreamData(1, Direction.SEND, 3, len(first) + len(hidden), second, frame_start=True))
    offset = 0
    for i in range(3):
        response = _api_versions_response(7, i)
        pairs += decoder.feed(StreamData(1, Direction.RECV, 4 + i, offset, response))
        offset += len(response)
    pairs += decoder.finish()
    answered = [p.response.api_keys[0].max_version for p in pairs if p.response is not None]
    assert answered == [], answered  # response 1 would have been paired with `second`: wrong


def test_a_response_to_no_pending_request_is_counted_unmatched():
    pairs, stats = _decode([_api_versions_request(7)], [_api_versions_response(7, 0), _api_versions_response(7, 1)])
    assert len(pairs) == 1 and pairs[0].response.api_keys[0].max_version == 0
    assert stats["unmatched_responses"] == 1


@pytest.mark.parametrize("n", [1, 3])
def test_a_response_skipping_requests_loses_the_skipped_ones(n):
    """Kafka answers in order: a response to a later request means the earlier ones' responses were lost."""
    ids = [10, 11, 12, 13]
    pairs, stats = _decode([_api_versions_request(c) for c in ids], [_api_versions_response(ids[n], 0)])
    by_id = {p.correlation_id: p for p in pairs}
    assert by_id[ids[n]].response is not None
    assert all(by_id[c].response_error == LOST for c in ids[:n])
    assert stats["lost_responses"] == n
