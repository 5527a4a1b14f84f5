"""`otel-kafka-ebpf top`: a terminal table of consumers and producers, refreshed every second.

One row per consumer instance and topic: service, group, client id, partitions, lag in messages and
seconds, consume rate against the topic's produce rate (from its high watermark), p50/p99 latency over
the last `window`, the worst status of its partitions with its lag cause, and where its lag is heading
(ETA: the soonest objective breach, else the longest catch-up); one row per producer process, client and
topic: rate and send latency. Rates and percentiles use the events' own time, so a replayed recording
shows what the live view showed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TextIO

from ..correlate.batches import DeliveredBatch, ProducedBatch
from ..correlate.lag import STATUS_CODES
from .metrics import LagMetricsSink
from .resources import ResourceCatalog

WINDOW_NS = 10_000_000_000
REFRESH_NS = 1_000_000_000
CLEAR = "\x1b[H\x1b[2J"


def percentile(samples: Iterable[tuple[float, int]], q: float) -> float | None:
    """The q-quantile of (value, weight) samples."""
    ordered = sorted(samples)
    total = sum(w for _, w in ordered)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= rank:
            return value
    return ordered[-1][0]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 10 else f"{seconds:.1f}s"


class TopView:
    def __init__(self, metrics: LagMetricsSink, resources: ResourceCatalog, out: TextIO, *, clear: bool = True,
                 window_ns: int = WINDOW_NS, refresh_ns: int | None = REFRESH_NS) -> None:
        self.metrics = metrics
        self.tracker = metrics.tracker
        self.resources = resources
        self.out = out
        self.clear = clear
        self.window_ns = window_ns
        self.refresh_ns = refresh_ns
        self._next = 0
        self._consumed: dict[tuple, deque] = {}  # (pid, client, topic) -> (ts, count, latency s | None)
        self._produced: dict[tuple, deque] = {}  # (pid, client, topic) -> (ts, count, duration s | None)
        self._hw: dict[str, deque] = {}  # topic -> (ts, sum of its partitions' high watermarks)
        metrics.listeners.append(self._delivered)

    def batches(self, batches: Iterable, now_ns: int) -> None:
        for b in batches:
            if type(b) is ProducedBatch:
                duration = (b.end_ns - b.start_ns) / 1e9 if b.end_ns is not None else None
                self._produced.setdefault((b.pid, b.client_id, b.topic_name), deque()).append(
                    (b.end_ns or b.start_ns, b.record_count, duration))

    def _delivered(self, b: DeliveredBatch, latency: float | None) -> None:
        self._consumed.setdefault((b.pid, b.client_id, b.topic_name), deque()).append(
            (b.end_ns, b.record_count, latency))

    def tick(self, now_ns: int) -> None:
        if now_ns >= self._next:
            self._next = now_ns + REFRESH_NS
            self._sample_high_watermarks(now_ns)
            if self.refresh_ns is None:
                return  # render only when asked (a replay's final table)
            self.out.write((CLEAR if self.clear else "") + self.render(now_ns) + ("" if self.clear else "\n"))
            self.out.flush()

    def close(self) -> None:
        pass

    def _sample_high_watermarks(self, now_ns: int) -> None:
        totals: dict[str, int] = {}
        for key, st in self.tracker.partitions.items():
            if st.high_watermark >= 0:
                totals[key.topic] = totals.get(key.topic, 0) + st.high_watermark
        for topic, total in totals.items():
            samples = self._hw.setdefault(topic, deque())
            samples.append((now_ns, total))
            while samples and samples[0][0] < now_ns - self.window_ns:
                samples.popleft()

    def _rate(self, samples: deque, now_ns: int) -> float:
        while samples and samples[0][0] < now_ns - self.window_ns:
            samples.popleft()
        return sum(s[1] for s in samples) / (self.window_ns / 1e9)

    def _produce_rate(self, topic: str) -> float | None:
        samples = self._hw.get(topic)
        if not samples or len(samples) < 2 or samples[-1][0] == samples[0][0]:
            return None
        return (samples[-1][1] - samples[0][1]) / ((samples[-1][0] - samples[0][0]) / 1e9)

    def _eta(self, ms: list, now_ns: int) -> str:
        """Where the instance's lag is heading: the soonest objective breach (`breach 12s`), else the longest
        catch-up (`catch-up 8s`), `ok` when caught up, `-` unknown."""
        breach, catch_up = [], []
        for m in ms:
            h = self.tracker.heading(m.position, m, now_ns)
            if h.breach_s is not None:
                breach.append(h.breach_s)
            elif h.catch_up_s is not None:
                catch_up.append(h.catch_up_s)
        if breach:
            return f"breach {min(breach):.0f}s"
        if catch_up:
            return "ok" if max(catch_up) == 0 else f"catch-up {max(catch_up):.0f}s"
        return "-"

    def render(self, now_ns: int) -> str:
        rows = []
        positions: dict[tuple, list] = {}
        for m in self.tracker.measures(now_ns):
            p = m.position
            positions.setdefault((p.instance.pid, p.instance.client_id, p.partition.topic), []).append(m)
        keys = set(positions) | set(self._consumed)
        for pid, client, topic in sorted(keys, key=lambda k: (str(k[2]), k[0], str(k[1]))):
            ms = positions.get((pid, client, topic), [])
            group = next((m.position.group for m in ms if m.position.group), None)
            samples = self._consumed.get((pid, client, topic), deque())
            rate = self._rate(samples, now_ns)
            lat = [(x[2], x[1]) for x in samples if x[2] is not None]
            lag = sum(max(m.lag, 0) for m in ms)
            lag_s = max((m.lag_seconds for m in ms if m.lag_seconds is not None), default=None)
            worst = max(ms, key=lambda m: STATUS_CODES[m.position.status], default=None)
            status = worst.position.status if worst is not None else "-"
            causes = [m.position.cause for m in ms if m.position.status == status and m.position.cause != "none"]
            cause = max(set(causes), key=causes.count) if causes else ("none" if ms else "-")
            eta = self._eta(ms, now_ns)
            produce = self._produce_rate(str(topic))
            rows.append((self.resources.service_name(pid) or str(pid), group or "-", client or "-", str(topic),
                         str(len(ms)), str(lag), "-" if lag_s is None else f"{lag_s:.1f}",
                         f"{rate:.0f}/{'-' if produce is None else f'{produce:.0f}'}",
                         _ms(percentile(lat, 0.5)), _ms(percentile(lat, 0.99)), status, cause, eta))
        head = ("SERVICE", "GROUP", "CLIENT", "TOPIC", "PARTS", "LAG", "LAG_S", "MSG/S CONS/PROD", "P50", "P99",
                "STATUS", "CAUSE", "ETA")
        out = [f"otel-kafka-ebpf top  consumers: {len(rows)}", _table(head, rows), ""]
        prows = []
        for (pid, client, topic), samples in sorted(self._produced.items(), key=lambda kv: (kv[0][2], kv[0][0])):
            rate = self._rate(samples, now_ns)
            durations = [(x[2], 1) for x in samples if x[2] is not None]
            prows.append((self.resources.service_name(pid) or str(pid), client or "-", topic, f"{rate:.0f}",
                          _ms(percentile(durations, 0.5)), _ms(percentile(durations, 0.99))))
        out.append(f"producers: {len(prows)}")
        out.append(_table(("SERVICE", "CLIENT", "TOPIC", "MSG/S", "SEND P50", "SEND P99"), prows))
        return "\n".join(out) + "\n"


def _table(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
