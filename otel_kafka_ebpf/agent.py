"""`run` (and `replay` with an exporter): the pipeline wired to spans, health metrics and an OTLP exporter."""

from __future__ import annotations

import platform
import socket
import sys
import time
from collections.abc import Callable, Iterable

from .capture.streams import Annotation, StreamEvent
from .config import AgentConfig, ConfigError
from .correlate.batches import Correlator
from .correlate.lag import StatusRules
from .discovery import METADATA_ANSWER, OFFSETS_ANSWER
from .identity import ProcessDirectory
from .kafka.counters import GAP_BYTES, is_problem
from .pipeline import Pipeline
from .sinks.export import Exporter, make_transport
from .sinks.health import Figure, HealthSink, Period
from .sinks.metrics import LagMetricsSink
from .sinks.resources import ResourceCatalog
from .sinks.spans import SpanBuilder, SpanSink


def status_rules(lag) -> StatusRules:
    """The [lag] settings as the lag tracker's rules."""
    s = 1_000_000_000
    return StatusRules(
        grace_ns=int(lag.grace_s * s), stall_ns=int(lag.stall_s * s), window_ns=int(lag.window_s * s),
        min_samples=lag.min_samples, warn_rise=lag.warn_rise, pace_margin=lag.pace_margin,
        hold_warn_ns=int(lag.hold_warn_s * s), hold_ok_ns=int(lag.hold_ok_s * s), hold_stop_ns=int(lag.hold_stop_s * s),
        hold_cause_ns=int(lag.hold_cause_s * s), processing_factor=lag.processing_factor,
        processing_min_ns=int(lag.processing_min_ms * 1e6), broker_factor=lag.broker_factor,
        broker_min_ns=int(lag.broker_min_ms * 1e6), burst_factor=lag.burst_factor, fill_ratio=lag.fill_ratio,
        caught_up_ns=int(lag.caught_up_s * s),
        objective_ns=int(lag.objective_s * s), forget_ns=int(lag.forget_s * s))


class Agent:
    def __init__(self, cfg: AgentConfig, *, live: bool, on_annotation: Callable[[Annotation], None] | None = None,
                 capture_counters: Callable[[], dict] | None = None, start_ns: int | None = None,
                 transport=None, capture_program: Callable[[], tuple] | None = None) -> None:
        self.cfg = cfg
        a = cfg.agent
        self.processes = ProcessDirectory(host_name=a.host_name or socket.gethostname(), command_args=a.command_args,
                                          read_proc=live)
        self.resources = ResourceCatalog(self.processes, a.resource_attributes, a.service_name)
        if transport is None:
            try:
                transport = make_transport(cfg.exporter)
            except OSError as exc:
                raise ConfigError(f"exporter: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}") from None
            except ValueError as exc:
                raise ConfigError(f"exporter: {exc}") from None
        self.exporter = Exporter(transport, max_items={"traces": cfg.exporter.max_queue_spans},
                                 timeout_s=cfg.exporter.timeout_s)
        self.destination = transport.describe()
        correlator = Correlator(resolve_wait_ns=int(a.resolve_wait_s * 1e9), group_wait_ns=int(a.group_wait_s * 1e9),
                                links=cfg.spans.links, rules=status_rules(cfg.lag))
        lookup = None
        if live and (a.discover_metadata or a.poll_high_watermarks):
            from .discovery import BrokerLookup

            lookup = BrokerLookup()
        self.lookup = lookup
        self.capture_counters = capture_counters or dict
        self.capture_program = capture_program  # () -> (program loaded or None, the kernel's refusal or None)
        self._degraded_resource = False
        self._told: set[tuple[str, str]] = set()
        self.warn = lambda msg: print(f"otel-kafka-ebpf: {msg}", file=sys.stderr, flush=True)
        self.pipeline = Pipeline(processes=self.processes, correlator=correlator, broker_traffic=a.broker_traffic,
                                 on_annotation=on_annotation, lookup=lookup, discover_metadata=a.discover_metadata,
                                 poll_high_watermarks=a.poll_high_watermarks)
        self.spans = None
        if cfg.spans.enabled:
            # a request larger than the queue could never be queued: every span of it would be dropped
            self.spans = SpanSink(SpanBuilder(self.resources, cfg.spans.ratio), self.exporter,
                                  max_batch=min(cfg.exporter.max_batch_spans, cfg.exporter.max_queue_spans),
                                  delay_ns=cfg.exporter.schedule_delay_ms * 1_000_000)
            self.pipeline.add_sink(self.spans)
        self.period = Period(cfg.metrics.export_interval_ms * 1_000_000,
                             start_ns if start_ns is not None else time.time_ns())
        self.metrics = LagMetricsSink(correlator, self.resources, self.exporter, self.period)
        self.pipeline.add_sink(self.metrics)
        self.health = HealthSink(self.figures, self.exporter, self.resources.agent, Period(
            self.period.interval_ns, self.period.start_ns))
        self.pipeline.add_sink(self.health)

    def run(self, events: Iterable[StreamEvent]) -> None:
        pipeline = self.pipeline
        first = True
        for event in events:
            if first and not self.processes.read_proc:  # a replay: its clock starts at its first event
                self.health.period.restart(event.ts_ns)
                self.period.restart(event.ts_ns)
                first = False
            pipeline.feed(event)

    def close(self, timeout_s: float = 5.0) -> None:
        self.pipeline.finish()
        end_ns = max(self.pipeline.now_ns, self.period.start_ns)
        self.metrics.export(end_ns)
        self.health.export(end_ns)
        if self.lookup is not None:
            self.lookup.close()
        self.exporter.shutdown(timeout_s)

    def _capture_figures(self) -> list[Figure]:
        """Which program the capture runs, and the kernel's refusal of the walker (by kernel release,
        so that a fleet learns which kernels refuse); the agent's own resource says it too."""
        loaded, refusal = self.capture_program() if self.capture_program else (None, None)
        if not loaded:
            return []
        from .capture.loader import WALKER
        from .sinks import otlp_wire as wire

        degraded = loaded != WALKER
        if degraded and not self._degraded_resource:
            attrs = dict(self.resources.agent_attributes)
            attrs.update({"otel_kafka_ebpf.capture.program": loaded, "otel_kafka_ebpf.capture.degraded": True})
            self.health.resource = wire.resource(attrs)
            self._degraded_resource = True
        out = [Figure("otel_kafka_ebpf.capture.degraded", "1",
                      "1 while the capture runs on the fallback program (frame heads only)", None,
                      [({"program": loaded}, int(degraded))])]
        if refusal is not None:
            out.append(Figure("otel_kafka_ebpf.bpf.refusals", "{program}", "BPF programs the kernel refused", True,
                              [({"program": refusal.program, "os.version": platform.release(),
                                 "reason": refusal.reason[:200]}, 1)]))
        return out

    def figures(self) -> list[Figure]:
        c = self.capture_counters() or {}
        d = self.pipeline.decoder.summary()
        builder_stats = self.spans.builder.stats if self.spans else {}
        ex = self.exporter
        problems = [({"problem": k}, v) for k, v in sorted(d.items()) if v and is_problem(k)]
        out = [
            Figure("otel_kafka_ebpf.capture.events", "{event}", "events read from the kernel", True,
                   [({}, c.get("events", 0))]),
            Figure("otel_kafka_ebpf.capture.bytes", "By", "Kafka bytes copied from the kernel", True,
                   [({}, c.get("bytes", 0))]),
            Figure("otel_kafka_ebpf.capture.lost_events", "{event}", "events lost to a full ring buffer", True,
                   [({}, c.get("ringbuf_drops", 0))]),
            Figure("otel_kafka_ebpf.capture.missed_runs", "{run}",
                   "runs of the BPF programs the kernel skipped (syscalls never seen; their bytes are gaps)", True,
                   [({}, c.get("missed_runs", 0))]),
            Figure("otel_kafka_ebpf.capture.gap_bytes", "By", "Kafka bytes not captured (reported as gaps)", True,
                   [({}, d.get(GAP_BYTES, 0))]),
            Figure("otel_kafka_ebpf.capture.kafka_connections", "{connection}", "connections classified Kafka",
                   True, [({}, c.get("conn_kafka", 0))]),
            Figure("otel_kafka_ebpf.capture.tls_connections", "{connection}",
                   "TLS connections by the stack whose plaintext the probes read (undecoded: none does)", True,
                   [({"stack": stack}, n) for stack, n in sorted(self.pipeline.tls.by_stack.items())]),
            Figure("otel_kafka_ebpf.capture.tls_lost_operations", "{operation}",
                   "TLS reads and writes whose socket was not known (their bytes are lost)", True,
                   [({}, c.get("tls_no_fd", 0))]),
            Figure("otel_kafka_ebpf.decoder.problems", "{frame}", "frames the decoder could not use, by problem",
                   True, problems),
            Figure("otel_kafka_ebpf.spans", "{span}", "spans built and sampled out", True,
                   [({"state": "built"}, builder_stats.get("send_spans", 0) + builder_stats.get("poll_spans", 0)),
                    ({"state": "sampled_out"}, builder_stats.get("spans_sampled_out", 0))]),
            Figure("otel_kafka_ebpf.export.items", "{item}", "spans, metric points and log records by outcome",
                   True, [({"signal": s, "outcome": o}, n) for o, counter in
                          (("exported", ex.exported), ("dropped", ex.dropped), ("rejected", ex.rejected))
                          for s, n in sorted(counter.items()) if n]),
            Figure("otel_kafka_ebpf.export.failed_requests", "{request}", "export requests that failed", True,
                   [({}, ex.requests.get("failed", 0))]),
            Figure("otel_kafka_ebpf.export.queued", "{item}", "items waiting to be exported", None,
                   [({"signal": s}, n) for s, n in sorted(ex.queued.items())]),
            Figure("otel_kafka_ebpf.batches.waiting", "{batch}", "batches waiting for their cluster, topic or group",
                   None, [({}, self.pipeline.correlator.parked)]),
            *self._lookup_figures(),
        ]
        out.extend(self._capture_figures())
        return out

    def _lookup_figures(self) -> list[Figure]:
        """The agent's own Metadata and ListOffsets lookups by outcome; the first that fail, or whose answer does
        not decode, are said in one line each (then counted only)."""
        if self.lookup is None:
            return []
        ls, ps = self.lookup.stats, self.pipeline.stats
        points = []
        for kind in (METADATA_ANSWER, OFFSETS_ANSWER):
            for outcome, n in (("answered", ls.get(f"{kind}_answered", 0)), ("failed", ls.get(f"{kind}_failed", 0)),
                               ("undecodable", ps.get(f"bad_{kind}_answers", 0))):
                if n:
                    points.append(({"kind": kind, "outcome": outcome}, n))
                if n and outcome != "answered" and (kind, outcome) not in self._told:
                    self._told.add((kind, outcome))
                    what = (f"the agent's own {kind} lookup failed ({self.lookup.last_failure})" if outcome == "failed"
                            else f"a broker's answer to the agent's own {kind} lookup does not decode "
                                 f"({self.pipeline.last_bad_answer})")
                    self.warn(f"warning: {what}; counted in otel_kafka_ebpf.broker.lookups (kind {kind}, outcome "
                              f"{outcome}), and the agent goes on without what it would have told")
        return [Figure("otel_kafka_ebpf.broker.lookups", "{request}",
                       "the agent's own Metadata and ListOffsets requests to brokers, by outcome", True, points)]

    def summary(self) -> str:
        b = self.spans.builder.stats if self.spans else {}
        ex = self.exporter
        return (f"{b.get('send_spans', 0)} send and {b.get('poll_spans', 0)} poll spans "
                f"({b.get('spans_sampled_out', 0)} sampled out); exported {ex.exported.get('traces', 0)} spans and "
                f"{ex.exported.get('metrics', 0)} metric points to {self.destination}, dropped "
                f"{sum(ex.dropped.values())}")
