"""One table of open connections, handed to the decoder and the correlator when they are made."""

from __future__ import annotations

import pytest

from otel_kafka_ebpf import fastpath
from otel_kafka_ebpf.capture.streams import ConnectionClosed, ConnectionOpened, Role
from otel_kafka_ebpf.correlate.batches import Correlator
from otel_kafka_ebpf.kafka import KafkaStreamDecoder
from otel_kafka_ebpf.pipeline import Pipeline

OPEN = ConnectionOpened(7, 1_000, 42, 42, "client", 0, 1, "127.0.0.1", 40000, "127.0.0.1", 9092, Role.CLIENT)


def _pipeline(**kw) -> Pipeline:
    return Pipeline(discover_metadata=False, poll_high_watermarks=False, **kw)


def test_the_pipeline_shares_one_table():
    p = _pipeline()
    assert p.decoder.opened is p.correlator.connections is p.connections
    p.feed(OPEN)
    assert p.connections == {7: OPEN}
    assert p.correlator.endpoint(7) is not None  # the correlator reads what the decoder filled
    p.feed(ConnectionClosed(7, 2_000))
    assert p.connections == {}


def test_a_correlator_made_outside_brings_its_table():
    table: dict[int, ConnectionOpened] = {}
    correlator = Correlator(connections=table)
    assert correlator.connections is table
    p = _pipeline(correlator=correlator)
    assert p.correlator is correlator and p.decoder.opened is table and p.connections is table
    p.feed(OPEN)
    assert table == {7: OPEN}


def test_a_correlator_alone_keeps_its_own():
    a, b = Correlator(), Correlator()
    assert a.connections == {} and a.connections is not b.connections


@pytest.mark.parametrize("choice", ["python", "core"])
def test_each_decoder_takes_the_table_it_is_given(choice):
    if choice == "core" and fastpath.CORE_MISSING:
        pytest.skip(fastpath.CORE_MISSING)
    table: dict[int, ConnectionOpened] = {}
    decoder, _ = fastpath.make_decoder(choice, table)
    assert decoder.opened is table
    decoder.feed(OPEN)
    assert table == {7: OPEN}
    assert fastpath.make_decoder(choice)[0].opened == {}
    assert KafkaStreamDecoder().opened is not KafkaStreamDecoder().opened
