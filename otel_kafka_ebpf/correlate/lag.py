"""Where each consumer instance is, how far behind, since when, and its status, from its own traffic.

State, bounded:
- the position of each consumer instance (process + client id) in each partition it fetches: the
  fetch offset of its latest Fetch request (KIP-227 sessions: a partition an incremental request
  leaves out keeps its offset); for a share group (KIP-932), whose members share partitions and have no
  fetch offset, the group's position: the end of what any of its members seen here acquired (records
  before it are handed out, some perhaps not yet acknowledged), the same for each member;
- the high watermark of each partition: every Fetch response and every Produce response seen;
- committed offsets from OffsetCommit;
- an offset index (offsets.py): when each offset was produced, from the oldest position or commit of
  the consumers seen on it (what lies behind all of them is dropped, 5 s after they passed it).

Lag in messages is the high watermark minus the position, never negative. Lag in seconds is the age
of the oldest message not yet consumed (now minus when the message at the position was produced), 0
when caught up. The status of an instance in a partition says whether it consumes, on the evidence
its own traffic and its process give (the rules and their thresholds: `StatusRules`):
  STOP   it does not consume: its connection or process is gone, another member of its group fetches
         the partition now, its process is stopped (the kernel's task state, a frozen cgroup: told by
         `process_state`), or it is overdue against its current pace: no fetch of the partition completed
         within `pace_margin` x the records in its hands x its time per record (at least `grace`), although
         messages are waiting (or, caught up, beyond its long poll);
  STALL  it still fetches, messages are waiting, and its position has not moved for `stall`: it fetched
         the same position again after a fetch that returned records (it does not consume them);
  WARN   it moves, but its lag trends up: a least-squares fit of the lag at its fetches over the window
         (at least `window`, at least `min_samples` fetches) rises by `warn_rise` messages or more;
  OK     otherwise.
Each status holds until the evidence for another has held for its hold time (`hold_*`). With the status
comes the lag's cause (`CAUSES`; never one that contradicts the status) and where the lag is heading:
consume and produce rates, the time to catch up, the time until the lag in seconds breaches an objective.
Plain data: no I/O, no settings; time comes in with the events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .offsets import CREATE_TIME, LOG_APPEND_TIME, OBSERVED, OffsetIndex

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
STATUS_CODES = {OK: 0, WARN: 1, STALL: 2, STOP: 3}

# why an instance lags (issue 17); which a status admits: CAUSES_OF
NONE, PROCESSING, FETCH_CAPACITY, BROKER, THROTTLED, REBALANCING, ERRORS, PRODUCER_BURST, STOPPED = (
    "none", "processing", "fetch_capacity", "broker", "throttled", "rebalancing", "errors", "producer_burst",
    "stopped")
CAUSES = (NONE, PROCESSING, FETCH_CAPACITY, BROKER, THROTTLED, REBALANCING, ERRORS, PRODUCER_BURST, STOPPED)
LAG_CAUSES = (PROCESSING, FETCH_CAPACITY, BROKER, THROTTLED, REBALANCING, ERRORS, PRODUCER_BURST)
CAUSES_OF = {STOP: (STOPPED, REBALANCING, ERRORS), STALL: (PROCESSING, THROTTLED, ERRORS),
             WARN: LAG_CAUSES, OK: (NONE,) + LAG_CAUSES}

# a process's state as the kernel tells it (`process_state`)
RUNNING, STOPPED_STATE, FROZEN, EXITED = "running", "stopped", "frozen", "exited"

GRACE_NS = 400_000_000  # a fetch may be this late before the instance counts as stopped
STALL_NS = 500_000_000  # messages waiting and no progress for this long, while fetching: STALL
WINDOW_NS = 5_000_000_000  # lag rising over this window: WARN
FORGET_NS = 60_000_000_000  # a stopped instance's partition is reported this long, then forgotten
MAX_POSITIONS = 100_000
PRUNE_NS = 5_000_000_000  # offset ranges behind every consumer of a partition are dropped this long after
COMMIT_KEEP_NS = 600_000_000_000  # a group's commit holds its partitions' history this long (it may come back)
ESTABLISHED = 3  # fetches seen before an instance's own pace sets how late its next fetch may be
NEW_NS = 5_000_000_000  # and for this long after it is first seen,
NEW_GRACE_NS = 2_500_000_000  # its next fetch may be this late
PACE_SAMPLES = 6  # its time per record: the slowest of its last this many fetch cycles
TREND_SAMPLES = 256  # (time, lag, high watermark, position, request time, handed, behind) at each fetch, bounded
LEFT_BEHIND = 10  # records a fetch left waiting beyond those it handed: the consumer works at its own pace
BREACH_PROBES = 32  # offsets ahead of a position looked up to tell when its lag in seconds reaches the objective
BREACH_STEPS = 12  # and bisection steps between the two probes around it
HW_SAMPLES = 1024  # a partition's high watermark over time (its produce rate): one sample per HW_STEP_NS at most
HW_STEP_NS = 100_000_000


@dataclass(frozen=True, slots=True)
class StatusRules:
    """The thresholds of the status and cause rules (config.py's [lag] table; carried in each status record)."""

    grace_ns: int = GRACE_NS  # a fetch may always be this late
    stall_ns: int = STALL_NS
    window_ns: int = WINDOW_NS  # the lag's trend and the rates are taken over at least this long
    min_samples: int = 6  # and over at least this many fetches (a slow consumer's cycle is long)
    warn_rise: float = 10.0  # messages: the fitted rise over the window that is a rising trend
    pace_margin: float = 3.0  # overdue: later than this many times the records in hand x its time per record
    hold_warn_ns: int = 1_000_000_000  # OK -> WARN once the rising trend held this long
    hold_ok_ns: int = WINDOW_NS  # WARN -> OK once it stopped rising for this long
    hold_stop_ns: int = 0  # -> STOP/STALL: the rules wait already (grace, pace, stall); the kernel's word is final
    hold_cause_ns: int = 1_000_000_000  # a new cause (within one status) once the evidence left the old one this long
    processing_factor: float = 3.0  # processing: time per record this many times what it was while caught up
    processing_min_ns: int = 1_000_000  # and at least this per record
    broker_factor: float = 3.0  # broker: fetch latency (fetches with records) this many times its usual
    broker_min_ns: int = 50_000_000  # and at least this
    burst_factor: float = 1.5  # producer_burst: the produce rate this many times what it was while caught up
    fill_ratio: float = 0.9  # fetch_capacity: responses this full of partition.max.bytes, fetched back to back
    caught_up_ns: int = 1_000_000_000  # lag in seconds at most this (and not rising): caught up, cause none
    objective_ns: int = 60_000_000_000  # the lag-in-seconds objective whose breach is estimated
    forget_ns: int = FORGET_NS

    def attributes(self) -> tuple:
        """The rules as status-record attributes, so that a user can see why."""
        return (("otel_kafka_ebpf.status.rule.grace_s", self.grace_ns / 1e9),
                ("otel_kafka_ebpf.status.rule.pace_margin", self.pace_margin),
                ("otel_kafka_ebpf.status.rule.window_s", self.window_ns / 1e9),
                ("otel_kafka_ebpf.status.rule.min_samples", self.min_samples),
                ("otel_kafka_ebpf.status.rule.warn_rise", self.warn_rise),
                ("otel_kafka_ebpf.status.rule.hold_warn_s", self.hold_warn_ns / 1e9),
                ("otel_kafka_ebpf.status.rule.hold_ok_s", self.hold_ok_ns / 1e9),
                ("otel_kafka_ebpf.status.rule.stall_s", self.stall_ns / 1e9),
                ("otel_kafka_ebpf.lag.objective_s", self.objective_ns / 1e9))


class PartitionKey(NamedTuple):
    """A partition of one cluster: topic by id where known (ids are unique across clusters), else by name."""

    cluster: str | None
    topic: object  # bytes (topic id) or str (name)
    partition: int


class Instance(NamedTuple):
    pid: int
    client_id: str | None


@dataclass(slots=True)
class PartitionState:
    high_watermark: int = -1
    hw_ns: int = 0  # when it was seen
    lag_appeared_ns: int = 0  # when the high watermark last moved past a position (for STOP timing)
    samples: deque = field(default_factory=lambda: deque(maxlen=HW_SAMPLES))  # (ns, hw), one per HW_STEP_NS at most


@dataclass(slots=True)
class Position:
    instance: Instance
    partition: PartitionKey
    group: str | None
    conn_id: int
    position: int
    moved_ns: int  # when the position last changed
    fetched_ns: int  # when the latest fetch covering the partition completed (response read)
    max_wait_ns: int  # that fetch's long-poll bound
    empty: bool  # that fetch returned no records for this partition
    committed: int = -1
    committed_ns: int = 0
    status: str = OK
    status_ns: int = 0
    gone_ns: int = 0  # when the instance stopped fetching for sure (connection closed, rebalanced away)
    moved_away: bool = False  # another member of its group fetches the partition now: not its lag any more
    lag_waiting_since_ns: int = 0  # when messages started waiting for it (lag went from 0 to > 0)
    first_ns: int = 0  # when it was first seen fetching the partition
    leader: object = None  # the broker endpoint it fetched the partition from last
    had_records: bool = False  # its latest fetch of the partition returned records
    refetches: int = 0  # fetches from the same position after one that returned records: not consuming
    gaps: deque = field(default_factory=lambda: deque(maxlen=16))  # recent times from a response to the next fetch
    # per fetch: (response ns, lag, hw, position, request ns of its last move, records handed, behind)
    history: deque = field(default_factory=lambda: deque(maxlen=TREND_SAMPLES))
    share: bool = False
    handed: deque = field(default_factory=lambda: deque(maxlen=2))  # records its last two fetches handed it
    per_record: deque = field(default_factory=lambda: deque(maxlen=PACE_SAMPLES))  # ns per record in hand, by cycle
    progress_ns: int = 0  # when a commit last moved on (it consumes, though it has not fetched)
    reason: str = ""
    candidate: str | None = None  # the status the evidence points to, not yet held long enough
    candidate_ns: int = 0
    cause: str = NONE
    cause_candidate: str | None = None
    cause_ns: int = 0
    base_per_record: float = -1.0  # ns per record while caught up (what "before the lag grew" was); -1 unknown
    base_latency: float = -1.0  # ns per fetch with records while caught up; -1 unknown
    base_produce: float = -1.0  # messages/s into the partition while it was caught up; -1 unknown
    latencies: deque = field(default_factory=lambda: deque(maxlen=4))  # recent fetches with records: ns
    fills: deque = field(default_factory=lambda: deque(maxlen=4))  # recent fill ratios of partition.max.bytes
    throttle_ns: int = 0  # when a fetch response last said throttle_time_ms > 0
    throttle_ms: int = 0
    error_ns: int = 0  # when a fetch of the partition last failed
    error_code: int = 0
    rebalance_ns: int = 0  # when its group last changed (JoinGroup, SyncGroup, LeaveGroup, revoked)


class Heading(NamedTuple):
    """Where an instance's lag in a partition is heading, over the window."""

    consume_rate: float | None  # messages/s
    produce_rate: float | None  # messages/s into the partition
    trend: float | None  # the lag's fitted slope, messages/s
    catch_up_s: float | None  # while it shrinks: the time to catch up (0: caught up)
    breach_s: float | None  # while it grows: the time until lag in seconds reaches the objective (0: beyond)


class StatusChange(NamedTuple):
    position: Position
    previous: str
    status: str
    ts_ns: int
    lag: int
    reason: str
    cause: str = NONE
    evidence: tuple = ()  # (attribute name, value) pairs behind the cause
    heading: Heading | None = None
    lag_seconds: float | None = None


class Measure(NamedTuple):
    """What one instance's position in one partition looks like now."""

    position: Position
    high_watermark: int
    lag: int  # messages, >= 0; -1 when the high watermark is unknown
    lag_seconds: float | None  # None: unknown
    lag_seconds_exact: bool  # False: a lower bound (the history of that offset was evicted)


class LagTracker:
    def __init__(self, rules: StatusRules | None = None, **overrides) -> None:
        rules = rules or StatusRules()
        if overrides:
            from dataclasses import replace

            rules = replace(rules, **overrides)
        self.rules = rules
        self.grace_ns = rules.grace_ns
        self.stall_ns = rules.stall_ns
        self.window_ns = rules.window_ns
        self.forget_ns = rules.forget_ns
        self.process_states: dict[int, tuple[str, int]] = {}  # pid -> (stopped | frozen, since): not running
        self.index = OffsetIndex()
        self.partitions: dict[PartitionKey, PartitionState] = {}
        self.positions: dict[tuple[Instance, PartitionKey], Position] = {}
        self._by_partition: dict[PartitionKey, set[Instance]] = {}
        self.committed: dict[tuple[str, PartitionKey], tuple[int, int]] = {}  # (group, partition) -> (offset, ns)
        self.share_ends: dict[tuple[str, PartitionKey], int] = {}  # (share group, partition) -> end acquired
        self._floors: dict[PartitionKey, int] = {}  # as of the last prune: offsets every consumer is past
        self._next_prune_ns = 0
        self.dropped_positions = 0

    # --- observations ----------------------------------------------------------------------------

    def high_watermark(self, key: PartitionKey, hw: int, ts_ns: int) -> None:
        if hw < 0:
            return
        st = self.partitions.get(key)
        if st is None:
            st = self.partitions[key] = PartitionState()
        if hw > st.high_watermark:
            st.high_watermark = hw
            st.hw_ns = ts_ns
            if st.samples and ts_ns - st.samples[-1][0] < HW_STEP_NS:
                if len(st.samples) > 1:
                    st.samples[-1] = (st.samples[-1][0], hw)
                else:
                    st.samples.append((ts_ns, hw))
            else:
                st.samples.append((ts_ns, hw))
            for instance in self._by_partition.get(key, ()):
                p = self.positions.get((instance, key))
                if p is not None and p.position < hw and p.lag_waiting_since_ns == 0:
                    p.lag_waiting_since_ns = ts_ns

    def produced(self, key: PartitionKey, base_offset: int, count: int, written_ns: int) -> None:
        """A Produce response gave `base_offset` to a batch of `count` written at `written_ns`."""
        self.index.add(key, base_offset, base_offset + count - 1, written_ns, OBSERVED)
        self.high_watermark(key, base_offset + count, written_ns)

    def fetched_batch(self, key: PartitionKey, first: int, last: int, first_ts_ms: int, max_ts_ms: int,
                      log_append_time: bool) -> None:
        """A fetched batch header: when its records were created (or appended) by their timestamps."""
        if max_ts_ms <= 0:
            return
        if log_append_time:
            self.index.add(key, first, last, max_ts_ms * 1_000_000, LOG_APPEND_TIME)
        else:  # a batch spans at most the producer's linger: its middle is within half of it
            mid_ms = (first_ts_ms + max_ts_ms) / 2 if first_ts_ms > 0 else max_ts_ms
            self.index.add(key, first, last, int(mid_ms * 1_000_000), CREATE_TIME)

    def fetched(self, instance: Instance, group: str | None, conn_id: int, key: PartitionKey, fetch_offset: int,
                high_watermark: int, request_ns: int, response_ns: int, max_wait_ms: int, empty: bool,
                share: bool = False, leader: object = None, delivered: int | None = None, throttle_ms: int = 0,
                fill: float | None = None) -> None:
        """A completed fetch of `key` by `instance` from position `fetch_offset`, that handed it `delivered`
        records (None: what lay between its position and the high watermark), throttled `throttle_ms`, its
        records `fill` of the partition's size limit."""
        self.high_watermark(key, high_watermark, response_ns)
        if delivered is None:
            delivered = 0 if empty else max(0, high_watermark - fetch_offset)
        pk = (instance, key)
        p = self.positions.get(pk)
        if p is None:
            if len(self.positions) >= MAX_POSITIONS:
                self.dropped_positions += 1
                return
            p = self.positions[pk] = Position(instance, key, group, conn_id, fetch_offset, request_ns, response_ns,
                                              max_wait_ms * 1_000_000, empty, status_ns=response_ns, share=share,
                                              first_ns=request_ns, had_records=not empty, leader=leader)
            self._by_partition.setdefault(key, set()).add(instance)
            if not share:  # share group members fetch the same partitions together
                self._others_lose(instance, group, key, request_ns)
        else:
            if request_ns >= p.fetched_ns:  # the client's own time between a response and its next fetch
                gap = request_ns - p.fetched_ns
                p.gaps.append(gap)
                in_hand = sum(p.handed)
                if in_hand > 0:  # its pace: the time it took for the records in its hands
                    p.per_record.append(gap / in_hand)
                    if p.status == OK and p.cause == NONE and self._caught_up(p, request_ns):
                        p.base_per_record = _ewma(p.base_per_record, _median(p.per_record))  # as `cause` reads it
            if fetch_offset != p.position:
                p.position = fetch_offset
                p.moved_ns = request_ns
                p.refetches = 0
            elif p.had_records and not p.gone_ns and p.rebalance_ns < p.fetched_ns:
                p.refetches += 1  # (after a rebalance a client fetches from its commit again: not a stall)
            if p.gone_ns:  # back: it fetches the partition again
                p.gone_ns = 0
                p.moved_away = False
                if not share:
                    self._others_lose(instance, group, key, request_ns)
            p.fetched_ns = max(p.fetched_ns, response_ns)
            p.max_wait_ns = max_wait_ms * 1_000_000
            p.empty = empty
            p.had_records = not empty
            p.conn_id = conn_id
            p.leader = leader
            if group:
                p.group = group
        p.handed.append(delivered)
        if delivered > 0:
            p.latencies.append(response_ns - request_ns)
            if p.status == OK and p.cause == NONE and self._caught_up(p, response_ns):
                p.base_latency = _ewma(p.base_latency, response_ns - request_ns)
        if fill is not None:
            p.fills.append(fill)
        if throttle_ms > 0:
            p.throttle_ns, p.throttle_ms = response_ns, throttle_ms
        self._settle(p, request_ns)
        st = self.partitions.get(key)
        lag = self._lag(p)
        # behind: it works at its own pace, records wait for it (it is not caught up, or its fetch left some)
        behind = lag - delivered > LEFT_BEHIND or not self._caught_up(p, response_ns)
        p.history.append((response_ns, lag, st.high_watermark if st is not None else -1, p.position,
                          p.moved_ns, delivered, behind))

    def _caught_up(self, p: Position, ts_ns: int) -> bool:
        """Its lag in seconds is within `caught_up` (what its pace was "before the lag grew")."""
        m = self.measure(p, ts_ns)
        return m.lag <= 0 or (m.lag_seconds is not None and m.lag_seconds * 1e9 <= self.rules.caught_up_ns)

    def fetch_failed(self, instance: Instance, key: PartitionKey, error_code: int, ts_ns: int) -> None:
        """A fetch of `key` by `instance` answered with a partition error."""
        p = self.positions.get((instance, key))
        if p is not None:
            p.error_ns, p.error_code = ts_ns, error_code

    def group_changed(self, group: str | None, instance: Instance, ts_ns: int) -> None:
        """A JoinGroup, SyncGroup or LeaveGroup of `instance` in `group`: its group's membership is changing."""
        for p in self.positions.values():
            if p.instance == instance or (group and p.group == group):
                p.rebalance_ns = ts_ns

    def process_state(self, pid: int, state: str, ts_ns: int) -> None:
        """The kernel's word on a consumer process: running, stopped (SIGSTOP, a tracer), frozen (its cgroup),
        or exited."""
        if state == EXITED:
            self.process_states.pop(pid, None)
            self.process_exited(pid, ts_ns)
        elif state in (STOPPED_STATE, FROZEN):
            if pid not in self.process_states:
                self.process_states[pid] = (state, ts_ns)
        else:
            self.process_states.pop(pid, None)

    def consumer_pids(self) -> set[int]:
        """Processes with a partition they still fetch: those whose state is worth asking the kernel."""
        return {p.instance.pid for p in self.positions.values() if not p.gone_ns and p.instance.pid > 0}

    def share_fetched(self, instance: Instance, group: str, conn_id: int, key: PartitionKey, acquired_end: int | None,
                      request_ns: int, response_ns: int, max_wait_ms: int, leader: object = None) -> None:
        """A completed ShareFetch of `key` by `instance`, a member of share group `group`, that acquired records up
        to `acquired_end` (exclusive; None: none this time). The group's position moves for all its members."""
        gk = (group, key)
        end = self.share_ends.get(gk, -1)
        moved = acquired_end is not None and acquired_end > end
        if moved:
            if gk not in self.share_ends and len(self.share_ends) >= MAX_POSITIONS:
                self.dropped_positions += 1
                return
            end = self.share_ends[gk] = acquired_end
        if end < 0:
            return  # nothing acquired by the group here yet: its position is unknown
        self.fetched(instance, group, conn_id, key, end, -1, request_ns, response_ns, max_wait_ms,
                     acquired_end is None, share=True, leader=leader)
        if moved:
            for other in self._by_partition.get(key, ()):
                q = self.positions.get((other, key))
                if q is not None and q.share and q.group == group and q.position < end:
                    q.position = end
                    q.moved_ns = request_ns
                    q.refetches = 0
                    self._settle(q, request_ns)

    def _lag(self, p: Position) -> int:
        st = self.partitions.get(p.partition)
        return max(0, st.high_watermark - p.position) if st is not None and st.high_watermark >= 0 else 0

    def _settle(self, p: Position, ts_ns: int) -> None:
        """Messages waiting for it since when, after its position moved."""
        if self._lag(p) == 0:
            p.lag_waiting_since_ns = 0
        elif p.lag_waiting_since_ns == 0:
            p.lag_waiting_since_ns = ts_ns

    def _others_lose(self, instance: Instance, group: str | None, key: PartitionKey, ts_ns: int) -> None:
        """Another member of the group fetching the partition now means a rebalance moved it away."""
        if not group:
            return
        for other in self._by_partition.get(key, ()):
            if other == instance:
                continue
            q = self.positions.get((other, key))
            if q is not None and q.group == group and not q.moved_away and q.fetched_ns <= ts_ns:
                q.gone_ns = q.gone_ns or ts_ns
                q.moved_away = True

    def committed_offset(self, group: str, key: PartitionKey, offset: int, ts_ns: int, instance: Instance) -> None:
        self.committed[(group, key)] = (offset, ts_ns)
        p = self.positions.get((instance, key))
        if p is not None:
            if offset > p.committed >= 0:
                p.progress_ns = ts_ns  # it consumes: a commit moved on
            p.committed = offset
            p.committed_ns = ts_ns
            if offset > p.position:  # it consumed what it fetched last, and says so (a commit at close)
                p.position = offset
                p.moved_ns = ts_ns
                self._settle(p, ts_ns)

    def connection_closed(self, conn_id: int, ts_ns: int) -> None:
        for p in self.positions.values():
            if p.conn_id == conn_id and not p.gone_ns:
                p.gone_ns = ts_ns

    def process_exited(self, pid: int, ts_ns: int) -> None:
        for (instance, _), p in self.positions.items():
            if instance.pid == pid and not p.gone_ns:
                p.gone_ns = ts_ns

    # --- now ---------------------------------------------------------------------------------------

    def measure(self, p: Position, now_ns: int) -> Measure:
        st = self.partitions.get(p.partition)
        hw = st.high_watermark if st is not None else -1
        if hw < 0:
            return Measure(p, hw, -1, None, False)
        lag = max(0, hw - p.position)
        if lag == 0:
            return Measure(p, hw, 0, 0.0, True)
        produced = self.index.lookup(p.partition, p.position)
        if produced is None:
            return Measure(p, hw, lag, None, False)
        return Measure(p, hw, lag, max(0.0, (now_ns - produced.time_ns) / 1e9), produced.exact)

    def prune(self, now_ns: int) -> None:
        """Every `PRUNE_NS`: drop the offset index's ranges that every consumer seen on their partition had
        passed at the previous round (a batch just fetched is still looked up for its latency), and commits
        older than `COMMIT_KEEP_NS`. Partitions with no consumer seen keep their bounded history."""
        if now_ns < self._next_prune_ns:
            return
        self._next_prune_ns = now_ns + PRUNE_NS
        for key, floor in self._floors.items():
            self.index.prune_below(key, floor)
        old = [gk for gk, (_, ts) in self.committed.items() if now_ns - ts > COMMIT_KEEP_NS]
        for gk in old:
            del self.committed[gk]
        floors: dict[PartitionKey, int] = {}
        for (_, key), p in self.positions.items():
            floors[key] = min(floors.get(key, p.position), p.position)
        for (_, key), (offset, _) in self.committed.items():  # a group that may come back resumes there
            floors[key] = min(floors.get(key, offset), offset)
        self._floors = floors

    def evaluate(self, now_ns: int) -> list[StatusChange]:
        """Statuses as of now; returns the changes. Forgets partitions stopped longer than `forget`."""
        self.prune(now_ns)
        rules = self.rules
        changes = []
        forget = []
        for pk, p in self.positions.items():
            m = self.measure(p, now_ns)
            status, reason = self._evidence(p, m, now_ns)
            if status == p.status:
                p.candidate = None
                if reason:
                    p.reason = reason
            else:
                if status != p.candidate:
                    p.candidate, p.candidate_ns = status, now_ns
                if now_ns - p.candidate_ns >= self._hold(p.status, status):
                    previous = p.status
                    p.status, p.status_ns, p.reason, p.candidate = status, now_ns, reason, None
                    cause, evidence = self._settle_cause(p, m, now_ns, force=True)
                    changes.append(StatusChange(p, previous, status, now_ns, max(m.lag, 0), reason, cause, evidence,
                                                self.heading(p, m, now_ns), m.lag_seconds))
                    if status == STOP:
                        p.history.clear()  # what it does once back is a new trend
            if p.candidate is None:
                self._settle_cause(p, m, now_ns)
            if p.status == OK and p.cause == NONE and (m.lag == 0 or (
                    m.lag_seconds is not None and m.lag_seconds * 1e9 <= rules.caught_up_ns)):
                produce = self.produce_rate(p.partition)
                if produce is not None:
                    p.base_produce = _ewma(p.base_produce, produce)
            if p.status == STOP and now_ns - max(p.status_ns, p.gone_ns, p.fetched_ns) > self.forget_ns:
                forget.append(pk)
        for pk in forget:
            p = self.positions.pop(pk)
            instances = self._by_partition.get(pk[1])
            if instances is not None:
                instances.discard(pk[0])
            if p.share and not any(q.share and q.group == p.group for q in
                                   (self.positions.get((i, pk[1])) for i in instances or ()) if q is not None):
                self.share_ends.pop((p.group, pk[1]), None)  # no member of the group left here
        live = {p.instance.pid for p in self.positions.values()}
        for pid in [pid for pid in self.process_states if pid not in live]:
            del self.process_states[pid]
        return changes

    def _hold(self, current: str, new: str) -> int:
        """How long the evidence for `new` must hold before `current` gives way to it."""
        r = self.rules
        if new in (STOP, STALL):
            return r.hold_stop_ns
        if current in (STOP, STALL):
            return 0  # it fetched and moved on: that is proof
        return r.hold_warn_ns if new == WARN else r.hold_ok_ns

    def due_ns(self, p: Position, now_ns: int) -> int:
        """How long after a response its next fetch may come: `pace_margin` x the records in its hands (its last
        two fetches: a client fetches the next batch while it handles one) x its time per record now (the slowest
        of its last cycles, not a figure learnt while it was fast), at least `grace`; for an instance too new to
        know its pace (a JVM warming up on its first backlog), at least `NEW_GRACE_NS`; and after a response that
        said throttle_time_ms, that much more (the client waits it out, as the broker asks)."""
        r = self.rules
        late = r.grace_ns
        in_hand = sum(p.handed)
        if p.per_record and in_hand:
            late = max(late, int(r.pace_margin * max(p.per_record) * in_hand))
        if len(p.gaps) < ESTABLISHED or now_ns - p.first_ns < NEW_NS:
            late = max(late, NEW_GRACE_NS)
        if p.throttle_ns and p.throttle_ns >= p.fetched_ns:  # its latest response told it to wait (a quota)
            late += p.throttle_ms * 1_000_000
        return late

    _expected_interval = due_ns

    def _evidence(self, p: Position, m: Measure, now_ns: int) -> tuple[str, str]:
        """The status the evidence points to now, and why."""
        if p.gone_ns:
            return STOP, "no longer fetches the partition (connection closed, process gone, or rebalanced away)"
        state = self.process_states.get(p.instance.pid)
        if state is not None:
            return STOP, ("its process is stopped (the kernel's task state)" if state[0] == STOPPED_STATE else
                          "its process is frozen (its cgroup)")
        late = self.due_ns(p, now_ns)
        if m.lag > 0:
            waiting_since = max(p.fetched_ns, p.lag_waiting_since_ns, p.progress_ns)
            if now_ns - waiting_since > late:
                return STOP, "messages are waiting and it has not fetched them within its pace"
            if p.refetches and now_ns - max(p.moved_ns, p.lag_waiting_since_ns) > max(self.stall_ns, late):
                return STALL, ("its share fetches acquire nothing although messages wait" if p.share else
                               "it fetches the same position again: its records are not consumed")
            trend = self.trend(p, now_ns)
            if trend is not None and trend[0] * trend[1] / 1e9 >= self.rules.warn_rise:
                return WARN, "its lag trends up over the window"
            if p.status == WARN and trend is None:
                return WARN, ""  # no new evidence either way: it holds
            return OK, ""
        if now_ns - p.fetched_ns > p.max_wait_ns + late:
            return STOP, "it stopped fetching"
        return OK, ""

    def _window(self, p: Position, now_ns: int) -> list:
        """Its samples over the window: at least `window`, and at least `min_samples` fetches."""
        hist = p.history
        start = now_ns - self.rules.window_ns
        n = sum(1 for s in hist if s[0] >= start)
        n = max(n, min(len(hist), self.rules.min_samples))
        return list(hist)[len(hist) - n:]

    def trend(self, p: Position, now_ns: int) -> tuple[float, int] | None:
        """The lag's least-squares slope (messages/s) at its fetches over the window, and the window's span in ns;
        None while fewer than `min_samples` fetches were seen (no evidence either way)."""
        samples = self._window(p, now_ns)
        if len(samples) < self.rules.min_samples:
            return None
        slope = _slope([(s[0], s[1]) for s in samples])
        if slope is None:
            return None
        return slope, max(self.rules.window_ns, samples[-1][0] - samples[0][0])

    def _turned(self, p: Position, now_ns: int) -> bool:
        """Its lag at its latest fetch is `warn_rise` below its peak over the window: it works off its backlog,
        though the fit over the window may still rise (WARN holds until it has not risen for a window)."""
        samples = self._window(p, now_ns)
        return bool(samples) and samples[-1][1] <= max(s[1] for s in samples) - self.rules.warn_rise

    def heading(self, p: Position, m: Measure, now_ns: int) -> Heading:
        """Where its lag is heading. Its consume rate: the records its position passed over its last fetches in
        the window, by their request times; the produce rate: the partition's high watermark over the window.
        What it handles with work waiting (`capacity`) and the work ahead of it (its lag and what its last fetch
        handed it that it has not done yet) give the time to catch up at the produce rate; the offset index
        (when each waiting record was produced) and the produce rate beyond it give when its lag in seconds
        reaches the objective, if that comes first: the lag in seconds can still grow while the lag in messages
        shrinks (it reads what a burst wrote, faster than the burst came in)."""
        samples = self._window(p, now_ns)
        consume = trend = catch_up = breach = None
        if len(samples) >= 2 and samples[-1][4] > samples[0][4]:
            consume = (samples[-1][3] - samples[0][3]) * 1e9 / (samples[-1][4] - samples[0][4])
        produce = self.produce_rate(p.partition)
        t = self.trend(p, now_ns)
        if t is not None:
            trend = t[0]
        if m.lag == 0:
            return Heading(consume, produce, trend, 0.0, None)
        capacity = self.capacity(p, now_ns)
        if capacity is None or capacity <= 0 or produce is None:
            return Heading(consume, produce, trend, None, None)
        # what its last fetch handed it that it has not done yet; below 0 once it has done more: it works on
        # records of a fetch that has not completed yet (whose offset the agent learns with its response)
        hist = p.history
        moved = hist[-1][3] - hist[-2][3] if len(hist) >= 2 else 0
        in_hand = moved - capacity * (now_ns - p.moved_ns) / 1e9
        if capacity > produce:
            catch_up = max(0.0, m.lag + in_hand) / (capacity - produce)
        if m.lag_seconds is not None and m.lag_seconds * 1e9 > self.rules.caught_up_ns:  # caught up: nowhere
            breach = self._breach(p, m, now_ns, capacity, produce, in_hand)
            if breach is not None and catch_up is not None and breach > catch_up:
                breach = None  # it catches up first
        return Heading(consume, produce, trend, catch_up, breach)

    def capacity(self, p: Position, now_ns: int) -> float | None:
        """Records/s it handles: the records it has done (its position less what its previous fetch handed it: a
        client works on one batch while it fetches the next) by its request times, over the recent part of its
        latest run of fetches while it was behind (not caught up: it works at its own pace), at least three
        fetches; without such a run, over its fetches in the window (a lower bound: it may have waited for
        records). None before three fetches."""
        hist = p.history
        n = len(hist)
        if n < 3:
            return None
        start = now_ns - self.rules.window_ns
        recent = n - 1
        while recent > 1 and hist[recent - 1][0] >= start:
            recent -= 1
        run = n - 1
        while run > 1 and hist[run - 1][6]:
            run -= 1
        if hist[-1][6] and run <= n - 3:
            first = max(run, min(recent, n - 3))
        else:
            first = min(recent, n - 3, max(1, n - self.rules.min_samples))
        last = hist[-1]
        if last[4] <= hist[first][4]:
            return None
        done = (last[3] - hist[-2][5]) - (hist[first][3] - hist[first - 1][5])
        return max(0.0, done * 1e9 / (last[4] - hist[first][4]))

    def _breach(self, p: Position, m: Measure, now_ns: int, capacity: float, produce: float,
                in_hand: float) -> float | None:
        """Seconds until its lag in seconds reaches the objective (0: beyond it; None: not while it goes on as
        now). Its position stays until it has done what it has in hand, then moves on at `capacity`; the oldest
        record it has not consumed is then at offset o after (o - position + in_hand) / capacity seconds, and
        was produced when the offset index says (up to the high watermark), or at `produce` after it."""
        objective = self.rules.objective_ns / 1e9
        if m.lag_seconds >= objective:
            return 0.0
        base = p.position - in_hand  # where it is had it moved on continuously
        hw = m.high_watermark
        st = self.partitions.get(p.partition)
        hw_ns = st.hw_ns if st is not None else now_ns
        index = self.index

        def gap(o: int) -> float:
            """Its lag in seconds when its position moves past offset o, less the objective."""
            produced = index.lookup(p.partition, o)
            t = produced.time_ns if produced is not None else now_ns
            return (now_ns - t) / 1e9 + (o + 1 - base) / capacity - objective

        lo, hi = max(p.position, min(hw - 1, int(base))), None  # what lies before `base` it is past
        if gap(lo) >= 0:
            hi = lo
        else:
            step = max(1, (hw - lo) // BREACH_PROBES)
            for o in range(lo + step, hw, step):
                if gap(o) >= 0:
                    hi = o
                    break
                lo = o
            if hi is None and gap(hw - 1) >= 0:
                hi = hw - 1
        if hi is not None:
            for _ in range(BREACH_STEPS):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                if gap(mid) >= 0:
                    hi = mid
                else:
                    lo = mid
            produced = index.lookup(p.partition, hi)
            t = produced.time_ns if produced is not None else now_ns
            # it reaches the objective while that record waits, or as its position gets there if it is older
            there = max(0.0, (hi - base) / capacity)
            return max(0.0, (t - now_ns) / 1e9 + objective, there)
        if capacity >= produce or produce <= 0:
            return None  # what is produced from now on, it reads faster than it comes
        # beyond the high watermark: records produced at `produce` from its time on, read at `capacity`
        at_hw = max(0.0, (hw - base) / capacity)  # when it gets to them
        lag_then = (now_ns - hw_ns) / 1e9 + at_hw
        return at_hw + max(0.0, (objective - lag_then) / (1 - capacity / produce))

    def produce_rate(self, key: PartitionKey) -> float | None:
        """Messages/s into the partition over the window, from its high watermark."""
        st = self.partitions.get(key)
        if st is None or len(st.samples) < 2:
            return None
        end_ns, end = st.samples[-1]
        start_ns, start = end_ns, end
        for t, v in reversed(st.samples):
            start_ns, start = t, v
            if t < end_ns - self.rules.window_ns:
                break
        return (end - start) * 1e9 / (end_ns - start_ns) if end_ns > start_ns else None

    # --- the lag's cause ---------------------------------------------------------------------------

    def _settle_cause(self, p: Position, m: Measure, now_ns: int, force: bool = False) -> tuple[str, tuple]:
        """The cause as the evidence tells it, within what the status admits; a change within one status holds
        for `hold_cause` first, a change the status forces is at once. What holds is that the evidence no longer
        says the cause named: once that held `hold_cause`, the cause it says then is named (evidence that
        wavers between two new causes, a loaded machine's processing and a full fetch, still names one)."""
        cause, evidence = self.cause(p, m, now_ns)
        if cause == p.cause:
            p.cause_candidate = None
        elif force or p.cause not in CAUSES_OF[p.status]:
            p.cause, p.cause_candidate = cause, None
        else:
            if p.cause_candidate is None:
                p.cause_ns = now_ns
            p.cause_candidate = cause
            if now_ns - p.cause_ns >= self.rules.hold_cause_ns:
                p.cause, p.cause_candidate = cause, None
        return p.cause, evidence

    def cause(self, p: Position, m: Measure, now_ns: int) -> tuple[str, tuple]:
        """Why it lags, from its own traffic: (cause, evidence attributes). Never one its status contradicts."""
        r = self.rules
        recent = now_ns - r.window_ns
        status = p.status
        # its usual time per record of late (the median of its last cycles: one slow cycle, a JVM compiling or
        # collecting, is not its pace)
        per_record = _median(p.per_record) if p.per_record else 0.0
        latency = sorted(p.latencies)[len(p.latencies) // 2] if p.latencies else 0
        fill = max(p.fills) if p.fills else 0.0
        evidence = (("otel_kafka_ebpf.lag.evidence.processing_s", (p.gaps[-1] if p.gaps else 0) / 1e9),
                    ("otel_kafka_ebpf.lag.evidence.per_record_ms", per_record / 1e6),
                    ("otel_kafka_ebpf.lag.evidence.per_record_before_ms", max(p.base_per_record, 0) / 1e6),
                    ("otel_kafka_ebpf.lag.evidence.fetch_latency_ms", latency / 1e6),
                    ("otel_kafka_ebpf.lag.evidence.throttle_ms", p.throttle_ms if p.throttle_ns >= recent else 0),
                    ("otel_kafka_ebpf.lag.evidence.fill_ratio", round(fill, 3)),
                    ("otel_kafka_ebpf.lag.evidence.error_code", p.error_code if p.error_ns >= recent else 0))
        rebalancing = p.moved_away or (p.rebalance_ns and p.rebalance_ns >= recent)
        errors = p.error_ns and p.error_ns >= recent
        throttled = p.throttle_ns and p.throttle_ns >= recent
        if status == STOP:
            return (REBALANCING if rebalancing else ERRORS if errors else STOPPED), evidence
        if status == STALL:
            return (THROTTLED if throttled else ERRORS if errors else PROCESSING), evidence
        if m.lag <= 0 or (status == OK and m.lag_seconds is not None and m.lag_seconds * 1e9 <= r.caught_up_ns):
            return NONE, evidence
        # what holds it back now, even while it works off a backlog something else made
        if rebalancing:
            return REBALANCING, evidence
        if errors:
            return ERRORS, evidence
        if throttled:
            return THROTTLED, evidence
        if p.cause in LAG_CAUSES and (status == OK or self._turned(p, now_ns)):
            return p.cause, evidence  # working off a backlog (its lag has turned down): what made it
        produce = self.produce_rate(p.partition)
        evidence += (("otel_kafka_ebpf.lag.evidence.produce_rate", round(produce, 1) if produce is not None else None),
                     ("otel_kafka_ebpf.lag.evidence.produce_rate_before",
                      round(p.base_produce, 1) if p.base_produce >= 0 else None))
        if produce is not None and p.base_produce > 0 and produce >= r.burst_factor * p.base_produce:
            return PRODUCER_BURST, evidence
        if per_record >= max(r.processing_factor * max(p.base_per_record, 0), r.processing_min_ns):
            return PROCESSING, evidence
        # after processing: a client that reads its socket from its poll loop (the Java client) reads a response
        # late while its handler is busy, which looks like a slow broker
        if p.base_latency > 0 and latency >= max(r.broker_factor * p.base_latency, r.broker_min_ns):
            return BROKER, evidence
        if fill >= r.fill_ratio:
            return FETCH_CAPACITY, evidence
        if status == OK:
            return NONE, evidence  # some lag, not growing, nothing of its own behind it
        return PRODUCER_BURST, evidence  # it works at its own pace; more is produced than it has sustained

    def stale_partitions(self, now_ns: int, older_than_ns: int) -> dict[object, set[PartitionKey]]:
        """Leader endpoint -> partitions whose consumers stopped or stall and whose high watermark is older than
        `older_than_ns`: nothing on the node tells how far they grew, the leader can."""
        out: dict[object, set[PartitionKey]] = {}
        for p in self.positions.values():
            # a share group's partitions too: no ShareFetch response carries the high watermark
            if (p.status in (STOP, STALL) or p.share) and not p.moved_away and p.leader is not None:
                st = self.partitions.get(p.partition)
                if st is None or now_ns - st.hw_ns > older_than_ns:
                    out.setdefault(p.leader, set()).add(p.partition)
        return out

    def measures(self, now_ns: int) -> list[Measure]:
        """Every instance's position now; a partition rebalanced to another member is not its lag any more."""
        return [self.measure(p, now_ns) for p in self.positions.values() if not p.moved_away]


def _ewma(old: float, sample: float) -> float:
    """A baseline: it follows a faster pace at once and a slower one only slowly (a slow-down in its first
    seconds, while the lag is still small, is not what it was before)."""
    if old < 0:
        return sample
    return old + (0.5 if sample < old else 0.02) * (sample - old)


def _median(values) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of (ns, value) points, per second; None without two distinct times."""
    n = len(points)
    if n < 2:
        return None
    t0 = points[0][0]
    mx = sum(t - t0 for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - t0 - mx) ** 2 for t, _ in points)
    if sxx <= 0:
        return None
    return sum((t - t0 - mx) * (v - my) for t, v in points) / sxx * 1e9
