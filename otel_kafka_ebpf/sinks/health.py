"""The agent's own health as OTLP metrics, under the agent's resource, every export interval.

Counts are cumulative sums since the agent started; levels (queued items, batches waiting) are
gauges. `read()` is a callable of the agent's that returns the current figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import otlp_wire as wire
from .resources import SCHEMA_URL, SCOPE


class Figure(NamedTuple):
    name: str
    unit: str
    description: str
    monotonic: bool | None  # True: a cumulative count, None: a gauge
    points: list[tuple[dict, int | float]]


def encode_figures(figures: list[Figure], start_ns: int, now_ns: int) -> bytes:
    """The metrics of one ExportMetricsServiceRequest body (without resource and scope)."""
    out = []
    for f in figures:
        points = [wire.number_point(wire.point_attributes(attrs, 7), start_ns, now_ns, value)
                  for attrs, value in f.points]
        if not points:
            continue
        if f.monotonic is None:
            out.append(wire.metric(f.name, f.description, f.unit, gauge_body=wire.gauge(points)))
        else:
            out.append(wire.metric(f.name, f.description, f.unit, sum_body=wire.sum_(points, f.monotonic)))
    return out


class Period:
    """A cumulative export's clock: when it started (the points' start time) and when it is next due."""

    __slots__ = ("interval_ns", "start_ns", "next_ns")

    def __init__(self, interval_ns: int, start_ns: int) -> None:
        self.interval_ns = interval_ns
        self.restart(start_ns)

    def restart(self, start_ns: int) -> None:
        """Start again at `start_ns` (a replay: the recording's own clock)."""
        self.start_ns = start_ns
        self.next_ns = start_ns + self.interval_ns

    def due(self, now_ns: int) -> bool:
        if now_ns < self.next_ns:
            return False
        self.next_ns = now_ns + self.interval_ns
        return True


class HealthSink:
    def __init__(self, read: Callable[[], list[Figure]], exporter, resource: bytes, period: Period) -> None:
        self.read = read
        self.exporter = exporter
        self.resource = resource
        self.period = period

    def tick(self, now_ns: int) -> None:
        if self.period.due(now_ns):
            self.export(now_ns)

    def export(self, now_ns: int) -> None:
        figures = self.read()
        metrics = encode_figures(figures, self.period.start_ns, now_ns)
        if metrics:
            payload = wire.export_metrics_request([(self.resource, SCOPE, metrics)], SCHEMA_URL)
            self.exporter.submit("metrics", payload, sum(len(f.points) for f in figures))
