"""The status rules of issue 19 and the causes and estimates of issue 17, on simulated clients: a consumer whose
handler turns slow is WARN (never STOP), never OK while its lag trends up, and does not flap; a stopped process
is STOP at once; a producer burst is `producer_burst` with catch-up and objective-breach estimates near the truth."""

from __future__ import annotations

from otel_kafka_ebpf.correlate.lag import (
    OK, PROCESSING, PRODUCER_BURST, STALL, STOP, WARN, Instance, LagTracker, PartitionKey,
)

MS = 1_000_000
S = 1_000_000_000
KEY = PartitionKey("c1", "orders", 0)
ME = Instance(100, "billing-1")
T0 = 1_000 * S


class Bed:
    """A producer and one consumer of one partition, stepped a millisecond at a time. The consumer's client keeps
    one fetch ahead of its handler (`ahead`, as the Java client, franz-go and kafka-python do) or fetches only once
    its handler is done; the handler takes `per_record(t)` ns a record."""

    def __init__(self, *, rate=lambda t: 100, per_record=lambda t: 0, ahead: bool = True, cap: int = 100_000,
                 **rules) -> None:
        self.tracker = LagTracker(**rules)
        self.rate, self.per_record, self.ahead, self.cap = rate, per_record, ahead, cap
        self.t = T0
        self.hw = 0
        self.owed = 0.0
        self.inflight = None  # (request time, fetch offset)
        self.buffer = []  # fetched batches (first, end) not yet handed to the handler
        self.busy_until = 0
        self.next_offset = 0  # where its next fetch starts
        self.stopped = False
        self.changes = []  # (s since T0, previous, status, cause)
        self.consumed_at = {}  # offset end -> when the handler finished it

    def _fetch(self) -> None:
        self.inflight = (self.t, self.next_offset)

    def step(self) -> None:
        t = self.t = self.t + MS
        self.owed += self.rate(t) / 1000
        n = int(self.owed)
        if n:
            self.owed -= n
            self.tracker.produced(KEY, self.hw, n, t)
            self.hw += n
        if self.stopped:
            pass
        else:
            if self.inflight and self.hw > self.inflight[1] and t >= self.inflight[0] + MS:
                req, offset = self.inflight
                end = min(self.hw, offset + self.cap)
                self.tracker.fetched(ME, "g", 7, KEY, offset, self.hw, req, t, 500, empty=False,
                                     delivered=end - offset)
                self.buffer.append((offset, end))
                self.next_offset = end
                self.inflight = None
            if t >= self.busy_until and self.buffer:
                first, end = self.buffer.pop(0)
                self.busy_until = t + (end - first) * self.per_record(t)
                self.consumed_at[end] = self.busy_until
                if self.ahead and self.inflight is None:
                    self._fetch()
            if self.inflight is None and not self.buffer and t >= self.busy_until:
                self._fetch()
        if (t - T0) % (100 * MS) == 0:
            for c in self.tracker.evaluate(t):
                self.changes.append(((t - T0) / S, c.previous, c.status, c.cause))

    def run_until(self, s: float) -> None:
        while self.t < T0 + s * S:
            self.step()

    def handled(self) -> int:
        """The records its handler has done by now."""
        return max((end for end, done in self.consumed_at.items() if done <= self.t), default=0)

    @property
    def position(self):
        return self.tracker.positions[(ME, KEY)]


def _slow(after_s: float, until_s: float | None = None, ms: float = 25):
    return lambda t: int(ms * MS) if T0 + after_s * S <= t and (until_s is None or t < T0 + until_s * S) else 0


def test_the_issues_slow_handler_is_warn_from_its_slow_down_never_stop_and_changes_once():
    """100 messages/s, the handler turns to 25 ms a message 12 s in (40/s): lag grows without end."""
    for ahead in (True, False):
        bed = Bed(per_record=_slow(12), ahead=ahead)
        bed.run_until(12)
        assert bed.changes == [] and bed.position.status == OK, (ahead, bed.changes)
        statuses = []
        while bed.t < T0 + 30 * S:
            bed.step()
            if (bed.t - T0) % (100 * MS) == 0 and bed.t >= T0 + 20 * S:
                statuses.append(bed.position.status)
        after = [c for c in bed.changes if c[0] >= 12]
        assert after and len(after) <= 3, (ahead, after)
        assert not any(c[2] in (STOP, STALL) for c in after), (ahead, after)
        assert set(statuses) == {WARN}, (ahead, after)
        assert bed.position.cause == PROCESSING, (ahead, after)


def test_a_handler_slowed_then_sped_up_is_warn_then_ok_once_its_lag_stops_rising():
    bed = Bed(per_record=_slow(5, 15))
    bed.run_until(60)
    statuses = [c[2] for c in bed.changes]
    assert statuses[0] == WARN and statuses[-1] == OK and STOP not in statuses and STALL not in statuses, bed.changes
    assert len(bed.changes) <= 3, bed.changes
    warn_at = next(c[0] for c in bed.changes if c[2] == WARN)
    assert warn_at <= 5 + 4, bed.changes  # named early in the slow-down (a 5 s window of fast fetches first)
    ok_at = bed.changes[-1][0]
    assert ok_at >= 15, bed.changes  # never OK while it rose


def test_a_stopped_process_is_stop_at_once_in_the_middle_of_a_slow_batch_and_back_when_continued():
    bed = Bed(per_record=_slow(5))
    bed.run_until(20)  # in long slow batches by now
    assert bed.position.status == WARN
    bed.tracker.process_state(ME.pid, "stopped", bed.t)
    bed.stopped = True
    stopped_at = bed.t
    bed.run_until((bed.t - T0) / S + 0.2)
    stop = [c for c in bed.changes if c[2] == STOP]
    assert stop and stop[0][0] * S + T0 - stopped_at <= 200 * MS and stop[0][3] == "stopped", bed.changes
    bed.tracker.process_state(ME.pid, "running", bed.t)
    bed.stopped = False
    bed.run_until((bed.t - T0) / S + 10)
    assert bed.changes[-1][2] in (WARN, OK) and bed.changes[-1][1] == STOP, bed.changes


def test_a_killed_process_is_stop_at_once():
    bed = Bed(per_record=_slow(5))
    bed.run_until(20)
    bed.tracker.process_state(ME.pid, "exited", bed.t)
    bed.stopped = True
    killed = bed.t
    bed.run_until((bed.t - T0) / S + 0.2)
    assert [c for c in bed.changes if c[2] == STOP][0][0] * S + T0 - killed <= 200 * MS


def test_a_hang_while_caught_up_is_stop_within_a_second():
    bed = Bed()
    bed.run_until(10)
    bed.stopped = True  # its handler blocks: no more fetches, though the process runs
    hung = bed.t
    bed.run_until(12)
    stop = [c for c in bed.changes if c[2] == STOP]
    assert stop and stop[0][0] * S + T0 - hung <= 1 * S, bed.changes


def _burst(t: int) -> int:
    """100 messages/s, then 800/s for 4 s from 10 s in, then 100/s again."""
    return 800 if T0 + 10 * S <= t < T0 + 14 * S else 100


def test_a_producer_burst_is_producer_burst_and_its_catch_up_estimate_is_within_a_fifth_of_the_truth():
    """The handler takes 4 ms a record (250/s), a fetch hands it at most 500 (1 MiB of 2 kB records). Estimated
    10 s into the recovery, the time until its handler has done all that was produced (to within 30 records), for
    a client that fetches ahead (as the Java client, franz-go and kafka-python do: within a fifth) and one that
    does not: its lag holds the batch it works on already, which the wire does not tell apart from a batch
    fetched ahead, so its estimate may be longer by that batch at the rate it gains (500 / (250 - 100) s)."""
    for ahead in (True, False):
        bed = Bed(rate=_burst, per_record=lambda t: 4 * MS, ahead=ahead, cap=500)
        bed.run_until(10)
        assert bed.changes == [], bed.changes
        bed.run_until(14)
        assert bed.position.status == WARN and bed.position.cause == PRODUCER_BURST, (ahead, bed.changes)
        causes = set()
        while bed.t < T0 + 24 * S:  # recovering: what made it, throughout
            bed.run_until((bed.t - T0) / S + 0.1)
            causes.add(bed.position.cause)
        assert causes == {PRODUCER_BURST}, (ahead, causes)
        m = bed.tracker.measure(bed.position, bed.t)
        estimate = bed.tracker.heading(bed.position, m, bed.t).catch_up_s
        at = bed.t
        while bed.hw - bed.handled() > 30:
            bed.step()
        truth = (bed.t - at) / S
        slack = 0 if ahead else 500 / (250 - 100)
        assert estimate is not None and -0.2 * truth <= estimate - truth <= 0.2 * truth + slack, (
            ahead, estimate, truth)
        assert not any(c[2] in (STOP, STALL) for c in bed.changes), (ahead, bed.changes)


def test_a_producer_burst_has_an_objective_breach_estimate_within_a_fifth_of_the_truth():
    """The same burst and a 5 s objective: 3 s into the burst, the time until its lag in seconds reaches 5 s. It
    does so after the burst, while its lag in messages already shrinks: it still reads what the burst wrote. As
    above, for a client that does not fetch ahead, it may be later by its batch's work (500 / 250 s)."""
    for ahead in (True, False):
        bed = Bed(rate=_burst, per_record=lambda t: 4 * MS, ahead=ahead, cap=500, objective_ns=5 * S)
        bed.run_until(13)
        m = bed.tracker.measure(bed.position, bed.t)
        estimate = bed.tracker.heading(bed.position, m, bed.t).breach_s
        at = bed.t
        while (bed.tracker.measure(bed.position, bed.t).lag_seconds or 0) < 5:
            bed.step()
        truth = (bed.t - at) / S
        assert bed.t > T0 + 14 * S  # after the burst
        slack = 0 if ahead else 500 / 250
        assert estimate is not None and -0.2 * truth <= estimate - truth <= 0.2 * truth + slack, (
            ahead, estimate, truth)
