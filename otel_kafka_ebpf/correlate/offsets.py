"""When each offset was produced: offset ranges -> produce time, per partition, bounded.

Entries come from produced batches the agent saw written (exact: the producer's request written)
and from fetched batch headers (the records' CreateTime, or the broker's LogAppendTime). An observed
write wins over a timestamp from the records. Memory is bounded: at most `max_entries` ranges in all
and `max_per_partition` per partition, the oldest ranges of a partition going first. A lookup of an
evicted or never-seen offset answers with what can be said for sure: the time of the nearest known
range after it, a lower bound on the offset's age (`exact` False), or nothing.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import NamedTuple

OBSERVED, LOG_APPEND_TIME, CREATE_TIME = 0, 1, 2  # sources, best first
SOURCE_NAMES = ("produce_request", "log_append_time", "create_time")

MAX_ENTRIES = 1_000_000  # 25 bytes each: about 25 MB at most
MAX_PER_PARTITION = 100_000


class ProduceTime(NamedTuple):
    time_ns: int
    source: int  # OBSERVED, LOG_APPEND_TIME or CREATE_TIME
    exact: bool  # False: the offset itself is not known, this is the next known range's time (a lower bound on age)


class _Ranges:
    __slots__ = ("first", "last", "time", "source")

    def __init__(self) -> None:
        self.first = array("q")
        self.last = array("q")
        self.time = array("q")
        self.source = array("b")

    def __len__(self) -> int:
        return len(self.first)


class OffsetIndex:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_per_partition: int = MAX_PER_PARTITION) -> None:
        self.max_entries = max_entries
        self.max_per_partition = max_per_partition
        self._parts: dict[object, _Ranges] = {}
        self.entries = 0
        self.evicted = 0  # ranges dropped for room (their offsets' times are then known only as bounds)
        self.pruned = 0  # ranges behind every consumer, dropped as no longer needed

    def __len__(self) -> int:
        return self.entries

    def add(self, partition: object, first: int, last: int, time_ns: int, source: int) -> None:
        """Record that offsets first..last were produced at time_ns (by `source`)."""
        if last < first or time_ns <= 0:
            return
        r = self._parts.get(partition)
        if r is None:
            r = self._parts[partition] = _Ranges()
        n = len(r)
        if n == 0 or first > r.last[n - 1]:  # the usual case: the next batch of the partition
            self._append(r, first, last, time_ns, source)
            return
        i = bisect_right(r.first, first) - 1
        if i >= 0 and r.first[i] == first:  # the same batch again: keep the better source
            if source < r.source[i]:
                r.time[i] = time_ns
                r.source[i] = source
                r.last[i] = max(r.last[i], last)
            return
        if (i >= 0 and first <= r.last[i]) or (i + 1 < n and last >= r.first[i + 1]):
            return  # overlaps a known range (compaction, or a duplicate): keep what is known
        r.first.insert(i + 1, first)
        r.last.insert(i + 1, last)
        r.time.insert(i + 1, time_ns)
        r.source.insert(i + 1, source)
        self._grew(r)

    def _append(self, r: _Ranges, first: int, last: int, time_ns: int, source: int) -> None:
        r.first.append(first)
        r.last.append(last)
        r.time.append(time_ns)
        r.source.append(source)
        self._grew(r)

    def _grew(self, r: _Ranges) -> None:
        self.entries += 1
        if len(r) > self.max_per_partition:
            self._evict(r, len(r) - self.max_per_partition * 3 // 4)
        if self.entries > self.max_entries:
            biggest = max(self._parts.values(), key=len)
            self._evict(biggest, max(1, len(biggest) // 4))

    def _evict(self, r: _Ranges, n: int) -> None:
        for a in (r.first, r.last, r.time, r.source):
            del a[:n]
        self.entries -= n
        self.evicted += n

    def lookup(self, partition: object, offset: int) -> ProduceTime | None:
        """When `offset` was produced, or (inexact) the time of the next known offset after it."""
        r = self._parts.get(partition)
        if r is None or not len(r):
            return None
        i = bisect_right(r.first, offset) - 1
        if i >= 0 and offset <= r.last[i]:
            return ProduceTime(r.time[i], r.source[i], True)
        if i + 1 < len(r):  # evicted, compacted away, or never seen: the next range was produced later
            return ProduceTime(r.time[i + 1], r.source[i + 1], False)
        return None

    def prune_below(self, partition: object, floor: int) -> None:
        """Drop the ranges of `partition` that end before offset `floor`."""
        r = self._parts.get(partition)
        if r is None:
            return
        n = bisect_left(r.last, floor)
        if n:
            for a in (r.first, r.last, r.time, r.source):
                del a[:n]
            self.entries -= n
            self.pruned += n

    def forget(self, partition: object) -> None:
        r = self._parts.pop(partition, None)
        if r is not None:
            self.entries -= len(r)
