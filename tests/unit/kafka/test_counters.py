"""The decoder's counters have one table (otel_kafka_ebpf/kafka/counters.py): every name the Python decoder and the
compiled core count under is in it, no decoder module forms a name of its own, and the agent's
`otel_kafka_ebpf.decoder.problems` holds the table's problems: the very names and counts it exported when it picked
them by prefix."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest

from otel_kafka_ebpf import fastpath
from otel_kafka_ebpf.agent import Agent
from otel_kafka_ebpf.capture.streams import ConnectionClosed, Direction, StreamData
from otel_kafka_ebpf.config import load_config
from otel_kafka_ebpf.kafka import KafkaStreamDecoder, counters
from otel_kafka_ebpf.kafka.versions import METADATA
from tests.testbed.otlp import InMemoryTransport
from tests.unit.kafka import vectors

ROOT = Path(__file__).resolve().parents[3]
# what the agent picked as problems before the table (agent.py, by prefix): the oracle of "no exported change"
PREFIXES_BEFORE = ("malformed", "truncated", "lost_responses", "unmatched", "ambiguous", "pending_overflow",
                   "bad_sizes")


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _request(api_key: int, version: int, corr: int, body: bytes) -> bytes:
    return _frame(struct.pack(">hhih", api_key, version, corr, 3) + b"cli" + body)


def _troubled_connection(conn_id: int = 1) -> list:
    """A client whose Metadata request body does not decode, then a frame that is no request, and a response
    to no request."""
    sent = (_request(METADATA, 1, 7, b"\x7f\xff\xff\xff")  # a topic count no body holds
            + _frame(b"\x7f\x7f\x00\x01\x00\x00\x00\x08"))  # api key 32639: not a request header
    received = _frame(struct.pack(">i", 4242) + b"\x00" * 8)
    return [StreamData(conn_id, Direction.SEND, 1_000, 0, sent, frame_start=True),
            StreamData(conn_id, Direction.RECV, 2_000, 0, received, frame_start=True),
            ConnectionClosed(conn_id, 3_000)]


def _garbage(seed: int) -> list:
    """A connection fed random frames and random bytes, cut at random places."""
    rng = random.Random(seed)
    out, offsets = [], {Direction.SEND: 0, Direction.RECV: 0}
    for i in range(40):
        direction = rng.choice((Direction.SEND, Direction.RECV))
        if rng.random() < 0.6:
            data = _request(rng.choice((0, 1, 3, 18, 200)), rng.randrange(0, 20), rng.randrange(0, 5),
                            rng.randbytes(rng.randrange(0, 40)))
        else:
            data = rng.randbytes(rng.randrange(1, 60))
        out.append(StreamData(seed, direction, 1_000 + i, offsets[direction], data))
        offsets[direction] += len(data)
    return out


def _decode(events) -> KafkaStreamDecoder:
    decoder = KafkaStreamDecoder()
    for event in events:
        decoder.feed(event)
    decoder.finish()
    return decoder


def test_every_name_the_compiled_core_counts_under_is_in_the_table():
    names = set()
    for path in sorted((ROOT / "native" / "src").glob("*.rs")):
        names.update(re.findall(r'bump\(py, "(\w+)"', path.read_text()))
    assert {"unmatched_responses", "lost_responses", "request_frames", "response_frames"} <= names  # found them
    assert [name for name in sorted(names) if not counters.is_known(name)] == []


def test_no_decoder_module_names_a_counter_itself():
    """Counted under a name of the table, not a literal or an f-string of the module's own."""
    sources = [*sorted((ROOT / "otel_kafka_ebpf" / "kafka").glob("*.py")), ROOT / "otel_kafka_ebpf" / "fastpath.py"]
    for path in sources:
        if path.name != "counters.py":
            assert re.findall(r"stats\[f?[\"']", path.read_text()) == [], path.name


@pytest.mark.parametrize("events", [_troubled_connection(), *(_garbage(seed) for seed in range(30)),
                                    *(vectors.events(name) for name in vectors.names()[:3])],
                         ids=["troubled", *(f"garbage-{s}" for s in range(30)), *vectors.names()[:3]])
def test_every_counter_is_in_the_table_and_the_problems_are_what_they_were(events):
    summary = _decode(events).summary()
    assert [name for name in summary if not counters.is_known(name)] == []
    problems = {name: n for name, n in summary.items() if n and counters.is_problem(name)}
    assert problems == {name: n for name, n in summary.items() if n and name.startswith(PREFIXES_BEFORE)}


def test_the_troubled_connection_s_problems_are_named_and_counted():
    summary = _decode(_troubled_connection()).summary()
    problems = {name: n for name, n in summary.items() if n and counters.is_problem(name)}
    assert problems == {counters.malformed_request_api(METADATA): 1, counters.MALFORMED_REQUEST_HEADERS: 1,
                        counters.UNMATCHED_RESPONSES: 1}
    assert counters.malformed_request_api(METADATA) == "malformed_request_api_3"  # the exported name, as it was


@pytest.mark.skipif(fastpath._core is None, reason=fastpath.CORE_MISSING or "")
def test_the_core_counts_the_same_problems():
    core = fastpath.CoreStreamDecoder()
    for event in _troubled_connection():
        core.feed(event)
    core.finish()
    assert core.summary() == _decode(_troubled_connection()).summary()


def test_the_agent_exports_the_table_s_problems():
    agent = Agent(load_config(None, {}, environ={}), live=False, transport=InMemoryTransport())
    agent.run(_troubled_connection())
    summary = agent.pipeline.decoder.summary()
    (figure,) = [f for f in agent.figures() if f.name == "otel_kafka_ebpf.decoder.problems"]
    agent.close(timeout_s=0.5)
    assert figure.points == [({"problem": name}, n) for name, n in sorted(summary.items())
                             if n and name.startswith(PREFIXES_BEFORE)]
    assert {attrs["problem"] for attrs, _ in figure.points} == {
        "malformed_request_api_3", "malformed_request_headers", "unmatched_responses"}
