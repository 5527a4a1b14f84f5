"""Lag state and consumer status: the tracker's rules on timelines, and the recorded vectors against truth."""

from __future__ import annotations

import re

import pytest

from otel_kafka_ebpf.agent import Agent
from otel_kafka_ebpf.capture.recording import read_recording
from otel_kafka_ebpf.config import load_config
from otel_kafka_ebpf.correlate.lag import OK, STALL, STOP, WARN, Instance, LagTracker, PartitionKey
from otel_kafka_ebpf.correlate.offsets import CREATE_TIME, OBSERVED, OffsetIndex
from tests.testbed.otlp import InMemoryTransport
from tests.unit.kafka import vectors

MS = 1_000_000
S = 1_000_000_000
KEY = PartitionKey("c1", "orders", 0)
ME = Instance(100, "billing-1")


def statuses(tracker: LagTracker, now: int) -> str:
    tracker.evaluate(now)
    return tracker.positions[(ME, KEY)].status


class Timeline:
    """A producer writing one message every `every` ns and a consumer fetching each at once."""

    def __init__(self, every: int = 10 * MS, max_wait_ms: int = 500) -> None:
        self.t = 1_000 * S
        self.every = every
        self.max_wait_ms = max_wait_ms
        self.hw = 0
        self.pos = 0
        self.tracker = LagTracker()

    def produce(self, n: int = 1) -> None:
        self.tracker.produced(KEY, self.hw, n, self.t)
        self.hw += n

    def fetch(self, advance: bool = True) -> None:
        self.tracker.fetched(ME, "g", 7, KEY, self.pos, self.hw, self.t, self.t + MS, self.max_wait_ms,
                             empty=self.pos >= self.hw)
        if advance:
            self.pos = self.hw

    def step(self, fetch: bool = True, advance: bool = True, produce: bool = True) -> str:
        self.t += self.every
        if produce:
            self.produce()
        if fetch:
            self.fetch(advance)
        return statuses(self.tracker, self.t + 2 * MS)


def test_a_new_consumer_warming_up_on_a_backlog_is_given_time():
    tl = Timeline()
    tl.produce(300)
    tl.fetch()  # its first fetch returns the backlog; a cold start takes 2 s to ask for more
    for dt in (500 * MS, 1 * S, 2 * S):
        assert statuses(tl.tracker, tl.t + dt) == OK
    assert statuses(tl.tracker, tl.t + 2600 * MS) == STOP


def test_a_healthy_consumer_stays_ok():
    tl = Timeline()
    assert {tl.step() for _ in range(1000)} == {OK}


def test_a_stopped_consumer_is_stop_within_a_second_and_ok_again_when_it_catches_up():
    tl = Timeline()
    for _ in range(600):  # 6 s: past its first seconds, its pace is known
        tl.step()
    stopped_at = tl.t
    seen = []
    while tl.t - stopped_at < 3 * S:
        seen.append((tl.t - stopped_at, tl.step(fetch=False)))
    first_stop = next(dt for dt, s in seen if s == STOP)
    assert first_stop <= 1 * S and all(s in (OK, STOP) for _, s in seen)
    m = tl.tracker.measure(tl.tracker.positions[(ME, KEY)], tl.t)
    # the position is the last fetch's offset: what that fetch delivered still counts until the next one
    assert m.lag == tl.hw - tl.pos + 1 > 250 and 2.9 < m.lag_seconds < 3.1  # the oldest waiting message's age
    tl.fetch()  # resumes and takes everything
    tl.t += tl.every
    tl.fetch()
    assert statuses(tl.tracker, tl.t + 2 * MS) == OK


def test_a_consumer_that_fetches_without_moving_is_stall():
    tl = Timeline()
    for _ in range(600):
        tl.step()
    seen = [tl.step(advance=False) for _ in range(100)]  # 1 s of fetches at the same position
    assert STALL in seen and STOP not in seen
    assert seen.index(STALL) * tl.every <= 1 * S


def test_lag_growing_over_the_window_is_warn():
    tl = Timeline(every=100 * MS)
    for _ in range(20):
        tl.step()
    seen = []
    for i in range(100):  # it takes one message per fetch while two arrive
        tl.t += tl.every
        tl.produce(2)
        tl.fetch(advance=False)
        tl.pos += 1
        seen.append(statuses(tl.tracker, tl.t + 2 * MS))
    assert WARN in seen and STALL not in seen and STOP not in seen


def test_caught_up_consumers_long_poll_without_being_stopped():
    tl = Timeline(every=5 * S, max_wait_ms=5000)  # franz-go waits 5 s for data by default
    tl.fetch()
    for _ in range(5):
        # an empty fetch sent at once after the last response, answered when max_wait ran out
        tl.tracker.fetched(ME, "g", 7, KEY, tl.pos, tl.hw, tl.t + 2 * MS, tl.t + 5 * S, 5000, empty=True)
        tl.t += 5 * S
        for dt in (0, 1 * S, 3 * S, 5 * S):
            assert statuses(tl.tracker, tl.t + dt) == OK
    assert statuses(tl.tracker, tl.t + 5 * S + tl.tracker.grace_ns + 10 * MS) == STOP


def test_rebalanced_away_and_connection_closed_are_stop_then_forgotten():
    tl = Timeline()
    for _ in range(10):
        tl.step()
    other = Instance(200, "billing-2")
    tl.tracker.fetched(other, "g", 8, KEY, tl.pos, tl.hw, tl.t + MS, tl.t + 2 * MS, 500, True)
    assert statuses(tl.tracker, tl.t + 3 * MS) == STOP
    assert tl.tracker.positions[(other, KEY)].status == OK
    tl.tracker.connection_closed(8, tl.t + 4 * MS)
    tl.tracker.evaluate(tl.t + 5 * MS)
    assert tl.tracker.positions[(other, KEY)].status == STOP
    tl.tracker.evaluate(tl.t + 61 * S)
    assert not tl.tracker.positions


def test_offset_index_prefers_observed_writes_and_bounds_what_it_forgot():
    index = OffsetIndex(max_entries=100, max_per_partition=40)
    for i in range(60):
        index.add(KEY, i * 10, i * 10 + 9, (i + 1) * S, CREATE_TIME)
    index.add(KEY, 590, 599, 123, OBSERVED)
    assert index.lookup(KEY, 595) == (123, OBSERVED, True)
    assert len(index) <= 40 and index.evicted >= 20
    evicted = index.lookup(KEY, 5)  # evicted: the next known range was produced later
    assert evicted is not None and not evicted.exact and evicted.time_ns > 1 * S
    assert index.lookup(KEY, 10_000) is None


def replay(name: str) -> tuple[Agent, InMemoryTransport]:
    transport = InMemoryTransport()
    agent = Agent(load_config(None, None, environ={}), live=False, transport=transport)
    agent.run(vectors.events(name))
    agent.close()
    return agent, transport


def healthy_vectors():
    return vectors.names(lambda n, e: e["client"] != "console-share" and "acks0" not in n)


@pytest.mark.parametrize("name", healthy_vectors())
def test_vectors_positions_commits_and_latency_against_truth(name):
    gt = vectors.truth(name)
    agent, transport = replay(name)
    tracker = agent.pipeline.correlator.lag
    consumers = {(i.client_id, k.partition): p for (i, k), p in tracker.positions.items()}
    expected_end = {}
    for c in gt.consumed:
        expected_end[(c.client_id, c.partition)] = max(expected_end.get((c.client_id, c.partition), 0), c.offset + 1)
    for (client_id, partition), end in expected_end.items():
        p = consumers[(client_id, partition)]
        m = tracker.measure(p, agent.pipeline.now_ns)
        # transactions: the commit marker after the last message takes an offset too
        assert m.lag == 0 and (p.position == end or ("-tx" in name and p.position == end + 1)), (p.position, end)
        assert p.group == gt.consumed[0].group
    # a healthy run: nobody stalls or lags behind more and more; STOP only when the consumer leaves
    changes = [(c.previous, c.status) for c in agent.metrics.changes]
    assert all(status in (OK, STOP) for _, status in changes), changes
    latency = agent.metrics.latency.series
    assert sum(s[1] for s in latency.values()) == len(gt.consumed)
    assert {dict(attrs)["otel_kafka_ebpf.latency.source"] for _, attrs in latency} == {"produce_request"}
    truth = [c.consume_ns - p.send_ns for c in gt.consumed for p in gt.produced
             if (p.partition, p.offset) == (c.partition, c.offset)]
    lo, hi = min(s[3] for s in latency.values()), max(s[4] for s in latency.values())
    assert 0 <= lo and hi * 1e9 <= max(truth) + 1e6  # captured between the clients' own send and consume
    sent = sum(n for (_, attrs), n in agent.metrics.sent.series.items())
    assert sent == len(gt.produced)
    assert transport.metrics()


def test_top_from_a_recording_shows_each_consumer_and_producer(capsys):
    from otel_kafka_ebpf.cli import main

    name = "go-live-6p"
    gt = vectors.truth(name)
    assert main(["top", "--replay", str(vectors.VECTORS / f"{name}.rec.gz"), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    consumer = next(line for line in out if gt.consumed[0].client_id in line).split()
    assert consumer[1:6] == [gt.consumed[0].group, gt.consumed[0].client_id, gt.produced[0].topic, "6", "0"]
    assert consumer[-3:] == ["OK", "none", "ok"]  # status, cause, ETA (caught up)
    producer = next(line for line in out if gt.produced[0].client_id in line).split()
    assert producer[1:3] == [gt.produced[0].client_id, gt.produced[0].topic]


def test_series_of_processes_long_gone_are_dropped_and_their_number_is_bounded():
    from otel_kafka_ebpf.sinks.metrics import MAX_SERIES, Histogram, Sum

    s, h = Sum(), Histogram((1.0, 2.0))
    s.add((1, ()), 5)
    h.record((1, ()), 0.5, 3)
    for _ in range(10):  # ten export rounds: process 2 goes on, process 1 is gone
        s.add((2, ()), 1)
        h.record((2, ()), 1.5)
        s.expire(5)
        h.expire(5)
    assert set(s.series) == set(h.series) == {(2, ())}
    assert s.series[(2, ())] == 10 and h.series[(2, ())][1] == 10
    for pid in range(MAX_SERIES + 10):
        s.add((pid, ()), 1)
    assert len(s.series) == MAX_SERIES + 1 and s.series[(0, (("otel.metric.overflow", True),))] >= 10


def test_share_group_members_share_the_groups_position_and_none_is_rebalanced_away():
    """KIP-932: members of a share group fetch the same partition together; the position is the group's (the end
    of what any member acquired), one member's fetch does not stop another, and acquiring nothing while messages
    wait is STALL."""
    tracker = LagTracker()
    a, b = Instance(100, "share-a"), Instance(200, "share-b")
    t = 1_000 * S
    tracker.produced(KEY, 0, 50, t)
    tracker.share_fetched(a, "sg", 7, KEY, None, t, t + MS, 500)
    assert not tracker.positions  # nothing acquired by the group yet: position unknown, no series
    tracker.share_fetched(a, "sg", 7, KEY, 20, t, t + MS, 500)
    tracker.share_fetched(b, "sg", 8, KEY, 35, t + 2 * MS, t + 3 * MS, 500)
    assert tracker.positions[(a, KEY)].position == tracker.positions[(b, KEY)].position == 35
    tracker.evaluate(t + 4 * MS)
    assert {p.status for p in tracker.positions.values()} == {OK}
    assert [m.lag for m in tracker.measures(t + 4 * MS)] == [15, 15]
    tracker.share_fetched(a, "sg", 7, KEY, 50, t + 5 * MS, t + 6 * MS, 500)
    assert [m.lag for m in tracker.measures(t + 7 * MS)] == [0, 0]
    tracker.produced(KEY, 50, 10, t + 8 * MS)  # then the share-partition hands out nothing more (no acks)
    for i in range(1, 80):  # 8 s of fetches: past a new member's grace
        now = t + 8 * MS + i * 100 * MS
        tracker.share_fetched(a, "sg", 7, KEY, None, now, now + MS, 500)
        tracker.share_fetched(b, "sg", 8, KEY, None, now, now + MS, 500)
        tracker.evaluate(now + 2 * MS)
        if i == 20:
            assert {p.status for p in tracker.positions.values()} == {OK}
    assert {p.status for p in tracker.positions.values()} == {STALL}
    tracker.connection_closed(8, now + 10 * MS)
    tracker.evaluate(now + 20 * MS)
    assert tracker.positions[(b, KEY)].status == STOP and tracker.positions[(a, KEY)].status == STALL
    tracker.evaluate(t + 100 * S)  # a has stopped fetching too
    assert tracker.positions[(a, KEY)].status == STOP and tracker.share_ends
    tracker.evaluate(t + 200 * S)
    assert not tracker.positions and not tracker.share_ends  # forgotten with the last member


def test_share_vector_positions_are_the_end_of_what_the_console_share_consumer_received():
    share = vectors.VECTORS / "share"
    agent = Agent(load_config(None, {}, environ={}), live=False, transport=InMemoryTransport())
    agent.run(read_recording(share / "java-share.rec.gz"))
    received: dict[int, int] = {}
    for partition, offset in re.findall(r"Partition:(\d+)\tOffset:(\d+)", (share / "java-share.console.txt").read_text()):
        received[int(partition)] = max(received.get(int(partition), -1), int(offset))
    positions = {k.partition: p for (_, k), p in agent.pipeline.correlator.lag.positions.items()}
    agent.close()
    assert sum(received.values()) + len(received) == 30  # the console consumer's 30 messages, offsets from 0
    assert {i: p.position for i, p in positions.items()} == {i: last + 1 for i, last in received.items()}
    assert {(p.group, p.share, p.instance.client_id) for p in positions.values()} == \
        {("v-java-share-group", True, "console-share-consumer")}


def test_the_offset_index_keeps_what_lies_ahead_of_the_slowest_consumer_and_its_commits():
    """A steady topic: the index holds the ranges at and after the oldest position or commit on the partition
    (and what a consumer passed within the last prune round), not the whole history; a group's commit holds
    its history for 10 minutes. Lag in seconds stays exact, and so does the latency of a batch just fetched."""
    tl = Timeline(every=10 * MS)
    slow = Instance(300, "slow-1")
    tl.tracker.committed_offset("slow-group", KEY, 0, tl.t, slow)
    for _ in range(3000):  # 30 s at 100/s
        tl.step()
    index = tl.tracker.index
    assert len(index) == 3000 and index.pruned == 0  # the slow group's commit at 0 holds it all
    tl.tracker.committed_offset("slow-group", KEY, 2990, tl.t, slow)
    for _ in range(1500):
        tl.step()
    assert len(index) == tl.hw - 2990 and index.pruned == 2990  # from the slow group's commit on
    tl.every = 100 * MS
    for _ in range(6600):  # 11 minutes at 10/s, the slow group gone
        tl.step()
    assert tl.tracker.committed == {}
    assert 0 < len(index) <= 110  # at most two prune rounds of 5 s
    m = tl.tracker.measure(tl.tracker.positions[(ME, KEY)], tl.t + 2 * MS)
    assert m.lag_seconds_exact
    assert index.lookup(KEY, tl.pos - 1).exact  # the batch just fetched: its latency is looked up after
