"""A sink gets what each of its hooks takes (pipeline.PairSink, BatchSink, TickSink, ClosingSink), and nothing else;
an object with none of the hooks (a misspelt one) is refused when added, not silently fed nothing."""

from __future__ import annotations

import pytest

from otel_kafka_ebpf.pipeline import BatchSink, ClosingSink, PairSink, Pipeline, TickSink
from tests.unit.kafka import vectors


class Pairs:
    def __init__(self) -> None:
        self.pairs = []

    def pair(self, pair, conn) -> None:
        self.pairs.append((pair, conn))


class BatchesClosing:
    def __init__(self) -> None:
        self.batches_seen = []
        self.closed = 0

    def batches(self, batches, now_ns: int) -> None:
        self.batches_seen.extend(batches)

    def close(self) -> None:
        self.closed += 1


class Ticks:
    def __init__(self) -> None:
        self.ticks = []

    def tick(self, now_ns: int) -> None:
        self.ticks.append(now_ns)


def test_each_sink_gets_its_hooks_only():
    pairs, batches, ticks = Pairs(), BatchesClosing(), Ticks()
    assert isinstance(pairs, PairSink) and not isinstance(pairs, (BatchSink, TickSink, ClosingSink))
    pipeline = Pipeline(sinks=[pairs, batches], discover_metadata=False, poll_high_watermarks=False)
    pipeline.add_sink(ticks)
    name = vectors.names()[0]
    pipeline.run(vectors.events(name))
    assert pairs.pairs and all(conn is None or conn.conn_id == pair.conn_id for pair, conn in pairs.pairs)
    assert batches.batches_seen and batches.closed == 1
    assert ticks.ticks == sorted(ticks.ticks) and ticks.ticks


def test_an_object_with_none_of_the_hooks_is_refused():
    class Misspelt:
        def pairs(self, pair, conn) -> None:  # not `pair`
            raise AssertionError("never called")

        def close(self) -> None:  # closing alone is no sink
            pass

    pipeline = Pipeline(discover_metadata=False, poll_high_watermarks=False)
    with pytest.raises(TypeError, match="Misspelt has none of a sink's hooks"):
        pipeline.add_sink(Misspelt())
    assert pipeline.sinks == []
