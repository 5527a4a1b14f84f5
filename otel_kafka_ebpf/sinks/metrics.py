"""Lag and latency as OTLP metrics, consumer status changes as OTLP log records.

Every message counts (metrics are complete, spans are sampled): a batch of N messages is one
aggregation step of weight N, never N calls. Histograms and counters are cumulative from the agent's
start; lag, position and status are gauges read fresh from the lag tracker at every export. Series
are per consumer or producer process (its resource) and the attributes below; at most
`MAX_SERIES` per metric, the rest folded into one series marked `otel.metric.overflow` (under the
agent's resource); a series unchanged for 5 minutes (its process is gone) is no longer exported.

  otel_kafka_ebpf.message.latency      histogram, s   producer's request written (or the records'
                                        CreateTime/LogAppendTime) -> consumer's Fetch response read
  messaging.client.operation.duration  histogram, s   send: Produce request written -> response read;
                                        receive: Fetch request -> response, `otel_kafka_ebpf.fetch.result`
                                        records|empty (an empty fetch waited out the broker's long poll)
  messaging.client.sent.messages       counter        messages in produced batches
  messaging.client.consumed.messages   counter        messages delivered to consumers
  messaging.kafka.consumer.lag         gauge          high watermark - position, per instance and partition
  otel_kafka_ebpf.consumer.lag.seconds gauge, s       age of the oldest message not yet consumed
  otel_kafka_ebpf.consumer.status      gauge          0 OK, 1 WARN, 2 STALL, 3 STOP, with `otel_kafka_ebpf.lag.cause`
  otel_kafka_ebpf.consumer.consume_rate / .produce_rate   gauges, messages/s over the status window
  otel_kafka_ebpf.consumer.catch_up_time / .objective_breach_time  gauges, s: while the lag shrinks / grows
  otel_kafka_ebpf.consumer.position / .committed_offset, otel_kafka_ebpf.partition.high_watermark
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable

from ..capture.streams import ConnectionOpened
from ..correlate.batches import Correlator, DeliveredBatch, ProducedBatch
from ..correlate.lag import STATUS_CODES, STOP, STALL, WARN, StatusChange
from ..correlate.offsets import SOURCE_NAMES
from ..kafka.connection import KafkaPair
from ..kafka.errors import error_name
from ..kafka.versions import FETCH
from . import otlp_wire as wire
from .health import Period
from .resources import SCHEMA_URL, SCOPE, ResourceCatalog

MAX_SERIES = 2000
LATENCY_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
                  300.0, 600.0, 1800.0, 3600.0)
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SETTLE_NS = 300_000_000  # a delivered batch waits this long for its producer's Produce response (same node)
IDLE_NS = 300_000_000_000  # a series that has not changed for 5 minutes is no longer exported (its process is gone)

STATUS_EVENT = "otel_kafka_ebpf.consumer.status"
_SEVERITY = {STOP: (wire.SEVERITY_ERROR, "ERROR"), STALL: (wire.SEVERITY_ERROR, "ERROR"),
             WARN: (wire.SEVERITY_WARN, "WARN")}
OVERFLOW_KEY = (0, (("otel.metric.overflow", True),))  # pid 0: the agent's resource


def batch_latency(correlator: Correlator, b: DeliveredBatch) -> tuple[float, str] | None:
    """Producer to consumer for a delivered batch: (seconds, how the produce time is known), or None."""
    key = correlator.partition_key(b.server, b.topic, b.topic_id, b.partition)
    if key is None:
        return None
    first = b.base_offset if b.fetch_offset is None else max(b.base_offset, b.fetch_offset)
    produced = correlator.lag.index.lookup(key, first)
    if produced is None or not produced.exact:
        return None
    return max(0.0, (b.end_ns - produced.time_ns) / 1e9), SOURCE_NAMES[produced.source]


class _Series:
    """Series by key, each remembering the export round it last changed in; idle ones are dropped."""

    __slots__ = ("series", "touched", "round")

    def __init__(self) -> None:
        self.series: dict[tuple, object] = {}
        self.touched: dict[tuple, int] = {}
        self.round = 0

    def _key(self, key: tuple) -> tuple:
        if key not in self.series and len(self.series) >= MAX_SERIES:
            key = OVERFLOW_KEY  # one series for all the rest, under the agent's own resource
        self.touched[key] = self.round
        return key

    def expire(self, idle_rounds: int) -> None:
        """A new export round; series unchanged for `idle_rounds` rounds (a process long gone) are dropped."""
        self.round += 1
        old = self.round - idle_rounds
        for key in [k for k, r in self.touched.items() if r < old]:
            del self.touched[key]
            del self.series[key]


class Histogram(_Series):
    __slots__ = ("bounds",)

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__()
        self.bounds = bounds  # series: key -> [bucket counts, count, sum, min, max]

    def record(self, key: tuple, value: float, weight: int = 1) -> None:
        key = self._key(key)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [[0] * (len(self.bounds) + 1), 0, 0.0, value, value]
        s[0][bisect_left(self.bounds, value)] += weight
        s[1] += weight
        s[2] += value * weight
        if value < s[3]:
            s[3] = value
        if value > s[4]:
            s[4] = value


class Sum(_Series):
    __slots__ = ()

    def add(self, key: tuple, n: int) -> None:
        key = self._key(key)
        self.series[key] = self.series.get(key, 0) + n


class LagMetricsSink:
    """The pipeline's metrics and status-log output. `tick` evaluates statuses every call and exports
    metrics every interval."""

    def __init__(self, correlator: Correlator, resources: ResourceCatalog, exporter, period: Period) -> None:
        self.correlator = correlator
        self.tracker = correlator.lag
        self.resources = resources
        self.exporter = exporter
        self.period = period
        self.latency = Histogram(LATENCY_BOUNDS)
        self.duration = Histogram(DURATION_BOUNDS)
        self.sent = Sum()
        self.consumed = Sum()
        self.stats: Counter = Counter()
        self._settling: deque[tuple[int, DeliveredBatch]] = deque()
        self._logs: list[tuple[int, bytes]] = []
        self.changes: deque[StatusChange] = deque(maxlen=1000)  # recent status changes
        self.listeners: list = []  # called with (delivered batch, latency s | None) once it settled (`top`)

    # --- inputs ------------------------------------------------------------------------------------

    def pair(self, pair: KafkaPair, conn: ConnectionOpened | None) -> None:
        if pair.api_key != FETCH or conn is None or pair.response is None or pair.response_ts_ns is None:
            return
        if pair.request is None or pair.request.replica_id >= 0:
            return
        records = any(p.batches for p in pair.response.partitions)
        attrs = (("messaging.system", "kafka"), ("messaging.operation.name", "poll"),
                 ("messaging.operation.type", "receive"), ("otel_kafka_ebpf.fetch.result",
                                                           "records" if records else "empty"))
        self.duration.record((conn.pid, attrs), (pair.response_ts_ns - pair.request_ts_ns) / 1e9)

    def batches(self, batches: Iterable, now_ns: int) -> None:
        for b in batches:
            if type(b) is ProducedBatch:
                self._produced(b)
            else:
                self._settling.append((b.end_ns + SETTLE_NS, b))

    def _produced(self, b: ProducedBatch) -> None:
        error = error_name(b.error_code) if b.error_code else None
        topic = b.topic_name
        attrs = (("messaging.system", "kafka"), ("messaging.operation.name", "send"),
                 ("messaging.destination.name", topic), ("error.type", error))
        self.sent.add((b.pid, attrs), b.record_count)
        if b.end_ns is not None:
            server = b.server
            dattrs = (("messaging.system", "kafka"), ("messaging.operation.name", "send"),
                      ("messaging.operation.type", "send"), ("messaging.destination.name", topic),
                      ("server.address", server.addr if server else None),
                      ("server.port", server.port if server else None), ("error.type", error))
            self.duration.record((b.pid, dattrs), (b.end_ns - b.start_ns) / 1e9)

    def _delivered(self, b: DeliveredBatch) -> None:
        topic = b.topic_name
        self.consumed.add((b.pid, (("messaging.system", "kafka"), ("messaging.operation.name", "poll"),
                                   ("messaging.destination.name", topic),
                                   ("messaging.consumer.group.name", b.group))), b.record_count)
        latency = batch_latency(self.correlator, b)
        for listener in self.listeners:
            listener(b, latency[0] if latency else None)
        if latency is None:
            self.stats["latency_produce_time_unknown"] += b.record_count
            return
        seconds, source = latency
        attrs = (("messaging.system", "kafka"), ("messaging.destination.name", topic),
                 ("messaging.consumer.group.name", b.group), ("otel_kafka_ebpf.latency.source", source))
        self.latency.record((b.pid, attrs), seconds, b.record_count)

    # --- time --------------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        settling = self._settling
        while settling and settling[0][0] <= now_ns:
            self._delivered(settling.popleft()[1])
        for change in self.tracker.evaluate(now_ns):
            self.changes.append(change)
            self._logs.append((change.position.instance.pid, self._status_record(change)))
        if self._logs:  # status changes go out at once, not at the next metric export
            self._export_logs()
        if self.period.due(now_ns):
            self.export(now_ns)
            idle_rounds = max(1, IDLE_NS // self.period.interval_ns)
            for series in (self.latency, self.duration, self.sent, self.consumed):
                series.expire(idle_rounds)

    def close(self) -> None:
        while self._settling:
            self._delivered(self._settling.popleft()[1])

    # --- output ------------------------------------------------------------------------------------

    def _status_record(self, c: StatusChange) -> bytes:
        p = c.position
        severity, text = _SEVERITY.get(c.status, (wire.SEVERITY_INFO, "INFO"))
        h = c.heading
        heading = () if h is None else tuple((name, round(v, 3)) for name, v in (
            ("otel_kafka_ebpf.consumer.consume_rate", h.consume_rate),
            ("otel_kafka_ebpf.consumer.produce_rate", h.produce_rate),
            ("otel_kafka_ebpf.lag.trend", h.trend),
            ("otel_kafka_ebpf.consumer.catch_up_time", h.catch_up_s),
            ("otel_kafka_ebpf.consumer.objective_breach_time", h.breach_s)) if v is not None)
        attrs = self._position_attrs(p) + (
            ("otel_kafka_ebpf.consumer.status", c.status), ("otel_kafka_ebpf.consumer.previous_status", c.previous),
            ("otel_kafka_ebpf.lag.cause", c.cause), ("otel_kafka_ebpf.consumer.status.reason", c.reason),
            ("messaging.kafka.consumer.lag", c.lag),
            ("otel_kafka_ebpf.consumer.lag.seconds", None if c.lag_seconds is None else round(c.lag_seconds, 3)),
            ("otel_kafka_ebpf.status.rule.due_s", self.tracker.due_ns(p, c.ts_ns) / 1e9)
        ) + heading + c.evidence + self.tracker.rules.attributes()
        eta = ""
        if h is not None and h.catch_up_s:
            eta = f"; catches up in {h.catch_up_s:.1f} s"
        elif h is not None and h.breach_s is not None:
            eta = f"; lag objective breached in {h.breach_s:.1f} s"
        body = (f"consumer {p.instance.client_id or '?'} (group {p.group or '-'}) on {p.partition.topic}"
                f"[{p.partition.partition}]: {c.previous} -> {c.status}" + (f": {c.reason}" if c.reason else "")
                + f"; cause {c.cause}; lag {c.lag} messages" + eta)
        fixed, varying = attrs[:len(self._position_attrs(p)) + 4], attrs[len(self._position_attrs(p)) + 4:]
        return wire.log_record(c.ts_ns, severity, text, body, wire.attributes(6, fixed) +
                               wire.fresh_attributes(6, varying), STATUS_EVENT)

    def _export_logs(self) -> None:
        by_pid: dict[int, list[bytes]] = {}
        for pid, record in self._logs:
            by_pid.setdefault(pid, []).append(record)
        n = len(self._logs)
        self._logs = []
        payload = wire.export_logs_request((self.resources.encoded(pid), SCOPE, records)
                                           for pid, records in by_pid.items())
        self.exporter.submit("logs", payload, n)

    @staticmethod
    def _position_attrs(p) -> tuple:
        return (("messaging.system", "kafka"), ("messaging.destination.name", p.partition.topic),
                ("messaging.destination.partition.id", str(p.partition.partition)),
                ("messaging.consumer.group.name", p.group), ("messaging.client.id", p.instance.client_id))

    def export(self, now_ns: int) -> None:
        start = self.period.start_ns
        by_pid: dict[int, list[bytes]] = {}
        points = 0

        def emit(name: str, description: str, unit: str, per_pid: dict[int, list[bytes]], kind: str,
                 monotonic: bool = True) -> None:
            nonlocal points
            for pid, pts in per_pid.items():
                points += len(pts)
                if kind == "gauge":
                    body = wire.metric(name, description, unit, gauge_body=wire.gauge(pts))
                elif kind == "sum":
                    body = wire.metric(name, description, unit, sum_body=wire.sum_(pts, monotonic))
                else:
                    body = wire.metric(name, description, unit, histogram_body=wire.histogram(pts))
                by_pid.setdefault(pid, []).append(body)

        def histogram_points(h: Histogram) -> dict[int, list[bytes]]:
            out: dict[int, list[bytes]] = {}
            for (pid, attrs), (buckets, count, total, lo, hi) in h.series.items():
                out.setdefault(pid, []).append(wire.histogram_point(
                    wire.point_attributes(attrs, 9), start, now_ns, count, total, buckets, h.bounds, lo, hi))
            return out

        def sum_points(s: Sum) -> dict[int, list[bytes]]:
            out: dict[int, list[bytes]] = {}
            for (pid, attrs), n in s.series.items():
                out.setdefault(pid, []).append(wire.number_point(wire.point_attributes(attrs, 7), start, now_ns, n))
            return out

        emit("otel_kafka_ebpf.message.latency", "producer to consumer: the producer's request written (or the "
             "records' timestamp) to the consumer's Fetch response read", "s", histogram_points(self.latency),
             "histogram")
        emit("messaging.client.operation.duration", "Produce and Fetch round trips", "s",
             histogram_points(self.duration), "histogram")
        emit("messaging.client.sent.messages", "messages produced", "{message}", sum_points(self.sent), "sum")
        emit("messaging.client.consumed.messages", "messages delivered to consumers", "{message}",
             sum_points(self.consumed), "sum")
        lag: dict[int, list[bytes]] = {}
        lag_s: dict[int, list[bytes]] = {}
        status: dict[int, list[bytes]] = {}
        position: dict[int, list[bytes]] = {}
        committed: dict[int, list[bytes]] = {}
        consume: dict[int, list[bytes]] = {}
        produce: dict[int, list[bytes]] = {}
        catch_up: dict[int, list[bytes]] = {}
        breach: dict[int, list[bytes]] = {}
        for m in self.tracker.measures(now_ns):
            p = m.position
            pid = p.instance.pid
            attrs = wire.point_attributes(self._position_attrs(p), 7)
            if m.lag >= 0:
                lag.setdefault(pid, []).append(wire.number_point(attrs, start, now_ns, m.lag))
            if m.lag_seconds is not None:
                lag_s.setdefault(pid, []).append(wire.number_point(attrs, start, now_ns, float(m.lag_seconds)))
            status.setdefault(pid, []).append(wire.number_point(wire.point_attributes(
                self._position_attrs(p) + (("otel_kafka_ebpf.lag.cause", p.cause),), 7), start, now_ns,
                STATUS_CODES[p.status]))
            h = self.tracker.heading(p, m, now_ns)
            for series, value in ((consume, h.consume_rate), (produce, h.produce_rate), (catch_up, h.catch_up_s),
                                  (breach, h.breach_s)):
                if value is not None:
                    series.setdefault(pid, []).append(wire.number_point(attrs, start, now_ns, float(value)))
            position.setdefault(pid, []).append(wire.number_point(attrs, start, now_ns, p.position))
            if p.committed >= 0:
                committed.setdefault(pid, []).append(wire.number_point(attrs, start, now_ns, p.committed))
        emit("messaging.kafka.consumer.lag", "high watermark minus the consumer's position", "{message}", lag,
             "gauge")
        emit("otel_kafka_ebpf.consumer.lag.seconds", "age of the oldest message the consumer has not consumed "
             "(a lower bound where that offset's history was evicted)", "s", lag_s, "gauge")
        emit("otel_kafka_ebpf.consumer.status", "0 OK, 1 WARN, 2 STALL, 3 STOP", "{status}", status, "gauge")
        emit("otel_kafka_ebpf.consumer.consume_rate", "messages the consumer took per second over the status "
             "window", "{message}/s", consume, "gauge")
        emit("otel_kafka_ebpf.consumer.produce_rate", "messages produced per second into the partition it reads, "
             "over the status window", "{message}/s", produce, "gauge")
        emit("otel_kafka_ebpf.consumer.catch_up_time", "while its lag shrinks: the time until it is caught up at "
             "the current rates (0: caught up)", "s", catch_up, "gauge")
        emit("otel_kafka_ebpf.consumer.objective_breach_time", "while its lag grows: the time until its lag in "
             "seconds reaches the objective (0: beyond it)", "s", breach, "gauge")
        emit("otel_kafka_ebpf.consumer.position", "the next offset the consumer fetches", "{offset}", position,
             "gauge")
        emit("otel_kafka_ebpf.consumer.committed_offset", "the consumer's last committed offset", "{offset}",
             committed, "gauge")
        hw_points = []
        for key, st in self.tracker.partitions.items():
            if st.high_watermark >= 0:
                attrs = (("messaging.system", "kafka"), ("messaging.destination.name", key.topic),
                         ("messaging.destination.partition.id", str(key.partition)),
                         ("otel_kafka_ebpf.cluster.id", key.cluster))
                hw_points.append(wire.number_point(wire.point_attributes(attrs, 7), start, now_ns, st.high_watermark))
        groups = [(self.resources.encoded(pid), SCOPE, metrics) for pid, metrics in by_pid.items()]
        if hw_points:
            groups.append((self.resources.agent, SCOPE, [wire.metric(
                "otel_kafka_ebpf.partition.high_watermark", "the partition's high watermark last seen", "{offset}",
                gauge_body=wire.gauge(hw_points))]))
            points += len(hw_points)
        if not groups:
            return
        self.exporter.submit("metrics", wire.export_metrics_request(groups, SCHEMA_URL), points)
