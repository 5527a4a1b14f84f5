"""A server-side consumer lag poller, as kafka_exporter and Kafka Lag Exporter work by default: every
30 s it reads each group's committed offsets (OffsetFetch) and each partition's end offset
(ListOffsets, latest) through the Admin API (kafka-python's KafkaAdminClient), and reports per
partition

  lag in messages  end offset - committed offset (never negative)
  lag in seconds   estimated as Kafka Lag Exporter does it: per partition a table of (end offset,
                   poll time) points, one per poll; the time at which the committed offset was the
                   end offset is interpolated between the two points around it (extrapolated from
                   the table's first and last points when it lies outside), and the lag is the
                   poll time minus that time. 0 when the committed offset is the newest end offset;
                   None (Kafka Lag Exporter: NaN) with fewer than two points.

    with LagPoller(cluster.bootstrap, ["my-group"], interval_s=30) as poller:
        ...
        for p in poller.polls[-1].partitions:
            print(p.topic, p.partition, p.lag_messages, p.lag_seconds)

A baseline of bench/bench_lag.py; the lag-in-seconds estimate is a pure function (LookupTable),
unit tested in tests/unit/test_lag_poller.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_INTERVAL_S = 30.0   # kafka_exporter's and Kafka Lag Exporter's default poll interval
TABLE_LIMIT = 60            # Kafka Lag Exporter's default lookup table size (points per partition)


@dataclass(frozen=True)
class Point:
    offset: int
    time: float   # seconds since the epoch


class LookupTable:
    """The (end offset, poll time) points of one partition, newest last, at most `limit`.

    Points that would break monotonic time or offsets are dropped; a flat run (the end offset not
    moving) keeps only its first and last point, so that a quiet partition does not fill the table."""

    def __init__(self, limit: int = TABLE_LIMIT):
        self.points: deque[Point] = deque(maxlen=limit)

    def add(self, offset: int, t: float) -> None:
        if self.points:
            last = self.points[-1]
            if t <= last.time or offset < last.offset:
                return
            if (offset == last.offset and len(self.points) > 1
                    and self.points[-2].offset == offset):
                self.points[-1] = Point(offset, t)   # stretch the flat run
                return
        self.points.append(Point(offset, t))

    def time_of(self, offset: int) -> tuple[float, bool] | None:
        """(estimated time at which `offset` was the end offset, extrapolated?), or None with
        fewer than two points or no slope to extrapolate along."""
        if len(self.points) < 2:
            return None
        pts = list(self.points)
        for left, right in zip(reversed(pts[:-1]), reversed(pts[1:])):   # newest pair first
            if left.offset <= offset <= right.offset:
                extrapolated = False
                break
        else:
            left, right, extrapolated = pts[0], pts[-1], True
        if right.offset == left.offset:
            return None
        slope = (right.time - left.time) / (right.offset - left.offset)   # seconds per message
        return right.time - (right.offset - offset) * slope, extrapolated

    def lag_seconds(self, committed: int, now: float) -> float | None:
        """Kafka Lag Exporter's time lag of a committed offset read at `now`."""
        if self.points and committed == self.points[-1].offset:
            return 0.0
        found = self.time_of(committed)
        return None if found is None else now - found[0]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int
    lag_messages: int
    lag_seconds: float | None


@dataclass
class Poll:
    time: float                                   # when the poll began (seconds since the epoch)
    partitions: list[PartitionLag] = field(default_factory=list)
    error: str | None = None

    def of(self, group: str, topic: str, partition: int) -> PartitionLag | None:
        return next((p for p in self.partitions if (p.group, p.topic, p.partition)
                     == (group, topic, partition)), None)


class LagPoller:
    """Polls `groups` on `bootstrap` every `interval_s` seconds in a thread (or poll_once() by
    hand); every Poll is kept in `polls` and passed to `on_poll`."""

    def __init__(self, bootstrap: str, groups: list[str], interval_s: float = DEFAULT_INTERVAL_S,
                 on_poll: Callable[[Poll], None] | None = None, client_id: str = "oke-lag-poller"):
        self.bootstrap = bootstrap
        self.groups = list(groups)
        self.interval_s = interval_s
        self.on_poll = on_poll
        self.client_id = client_id
        self.tables: dict[tuple[str, int], LookupTable] = {}
        self.polls: list[Poll] = []
        self._admin = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _client(self):
        if self._admin is None:
            from kafka.admin import KafkaAdminClient
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(","),
                                           client_id=self.client_id, request_timeout_ms=10_000)
        return self._admin

    def poll_once(self) -> Poll:
        from kafka.admin import OffsetSpec
        poll = Poll(time.time())
        try:
            admin = self._client()
            committed = admin.list_group_offsets({g: None for g in self.groups})
            partitions = {tp for offsets in committed.values() for tp in offsets}
            ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
            for tp, end in ends.items():
                self.tables.setdefault((tp.topic, tp.partition), LookupTable()).add(end.offset, poll.time)
            for group, offsets in committed.items():
                for tp, meta in sorted(offsets.items()):
                    if meta.offset < 0 or tp not in ends:
                        continue
                    end = ends[tp].offset
                    table = self.tables[(tp.topic, tp.partition)]
                    poll.partitions.append(PartitionLag(
                        group, tp.topic, tp.partition, meta.offset, end, max(0, end - meta.offset),
                        table.lag_seconds(meta.offset, poll.time)))
        except Exception as e:  # noqa: BLE001 - a failed poll is reported, the next one retries
            poll.error = f"{type(e).__name__}: {e}"
            self._close_client()
        self.polls.append(poll)
        if self.on_poll:
            self.on_poll(poll)
        return poll

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.poll_once()
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> "LagPoller":
        self._thread = threading.Thread(target=self._run, name="lag-poller", daemon=True)
        self._thread.start()
        return self

    def _close_client(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001 - closing a broken client
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._close_client()

    def __enter__(self) -> "LagPoller":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
