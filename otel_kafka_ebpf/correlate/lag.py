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
when caught up. The status of an instance in a partition follows Burrow's idea on a sub-second
scale:
  STOP   it no longer fetches the partition: its connection or process is gone, another member of
         its group fetches the partition now, or no fetch of it completed within its usual interval
         (at least `grace`) although messages are waiting (or, caught up, beyond its long poll);
  STALL  it still fetches, messages are waiting, and its position has not moved for `stall`: it fetched
         the same position again after a fetch that returned records (it does not consume them);
  WARN   it moves, but its lag has grown over the last `window`;
  OK     otherwise.
Plain data: no I/O, no settings; time comes in with the events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .offsets import CREATE_TIME, LOG_APPEND_TIME, OBSERVED, OffsetIndex

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
STATUS_CODES = {OK: 0, WARN: 1, STALL: 2, STOP: 3}

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
    history: deque = field(default_factory=lambda: deque(maxlen=64))  # (ns, lag) samples, one per fetch
    share: bool = False


class StatusChange(NamedTuple):
    position: Position
    previous: str
    status: str
    ts_ns: int
    lag: int
    reason: str


class Measure(NamedTuple):
    """What one instance's position in one partition looks like now."""

    position: Position
    high_watermark: int
    lag: int  # messages, >= 0; -1 when the high watermark is unknown
    lag_seconds: float | None  # None: unknown
    lag_seconds_exact: bool  # False: a lower bound (the history of that offset was evicted)


class LagTracker:
    def __init__(self, *, grace_ns: int = GRACE_NS, stall_ns: int = STALL_NS, window_ns: int = WINDOW_NS,
                 forget_ns: int = FORGET_NS) -> None:
        self.grace_ns = grace_ns
        self.stall_ns = stall_ns
        self.window_ns = window_ns
        self.forget_ns = forget_ns
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
                share: bool = False, leader: object = None) -> None:
        """A completed fetch of `key` by `instance` from position `fetch_offset`."""
        self.high_watermark(key, high_watermark, response_ns)
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
                p.gaps.append(request_ns - p.fetched_ns)
            if fetch_offset != p.position:
                p.position = fetch_offset
                p.moved_ns = request_ns
                p.refetches = 0
            elif p.had_records:
                p.refetches += 1
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
        self._settle(p, request_ns)
        p.history.append((response_ns, self._lag(p)))

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
        changes = []
        forget = []
        for pk, p in self.positions.items():
            m = self.measure(p, now_ns)
            status, reason = self._status(p, m, now_ns)
            if status != p.status:
                changes.append(StatusChange(p, p.status, status, now_ns, max(m.lag, 0), reason))
                p.status = status
                p.status_ns = now_ns
            if status == STOP and now_ns - max(p.status_ns, p.gone_ns, p.fetched_ns) > self.forget_ns:
                forget.append(pk)
        for pk in forget:
            p = self.positions.pop(pk)
            instances = self._by_partition.get(pk[1])
            if instances is not None:
                instances.discard(pk[0])
            if p.share and not any(q.share and q.group == p.group for q in
                                   (self.positions.get((i, pk[1])) for i in instances or ()) if q is not None):
                self.share_ends.pop((p.group, pk[1]), None)  # no member of the group left here
        return changes

    def _expected_interval(self, p: Position, now_ns: int) -> int:
        """How long after a response its next fetch may go out: the grace, or three times the client's usual
        time between a response and its next request (a slow handler), whichever is longer; for an instance
        too new to know its pace (a JVM warming up on its first backlog), at least `NEW_GRACE_NS`."""
        late = self.grace_ns
        if p.gaps:
            gaps = sorted(p.gaps)
            late = max(late, 3 * gaps[min(len(gaps) - 1, len(gaps) * 9 // 10)])
        if len(p.gaps) < ESTABLISHED or now_ns - p.first_ns < NEW_NS:
            late = max(late, NEW_GRACE_NS)
        return late

    def _status(self, p: Position, m: Measure, now_ns: int) -> tuple[str, str]:
        if p.gone_ns:
            return STOP, "no longer fetches the partition (connection closed, process gone, or rebalanced away)"
        late = self._expected_interval(p, now_ns)
        if m.lag > 0:
            waiting_since = max(p.fetched_ns, p.lag_waiting_since_ns)
            if now_ns - waiting_since > late:
                return STOP, "messages are waiting and it has not fetched them"
            if p.refetches and now_ns - max(p.moved_ns, p.lag_waiting_since_ns) > max(self.stall_ns, late):
                return STALL, ("its share fetches acquire nothing although messages wait" if p.share else
                               "it fetches the same position again: its records are not consumed")
            if self._rising(p, now_ns):
                return WARN, "its lag has grown over the window"
            return OK, ""
        if now_ns - p.fetched_ns > p.max_wait_ns + late:
            return STOP, "it stopped fetching"
        return OK, ""

    def _rising(self, p: Position, now_ns: int) -> bool:
        """Lag over the window: never back to zero, and higher at the end than at the start."""
        start = now_ns - self.window_ns
        hist = p.history
        if not hist or hist[0][0] > start:
            return False  # not a whole window seen yet
        first = None
        for ts, lag in hist:
            if ts < start:
                first = lag
                continue
            if lag == 0:
                return False
        last = hist[-1][1]
        return first is not None and last > first

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
