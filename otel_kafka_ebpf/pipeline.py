"""One path for `trace`, `replay`, `run` and `top`: stream events -> decoder -> correlation -> sinks.

The same events give the same output whether they come from the live capture or a recording:
time is the events' own (a recording replays with its timestamps), and facts the live run learnt
outside the streams (a process's identity, a broker's Metadata the agent asked for) travel as
`Annotation` events, recorded where they took effect.

A sink is a small object with one or more of the hooks below (`PairSink`, `BatchSink`, `TickSink`, and
`ClosingSink` for the end of input); `add_sink` hands it what each hook it has takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TextIO, runtime_checkable

from .capture.streams import Annotation, ConnectionClosed, ConnectionOpened, StreamEvent
from .correlate.batches import Correlator
from .correlate.clusters import Endpoint
from .correlate.undecoded import TlsConnections, UndecodedTls
from .fastpath import pipeline_decoder
from .discovery import METADATA_ANSWER as METADATA, OFFSETS_ANSWER as OFFSETS
from .identity import ProcessDirectory, ProcessIdentity
from .kafka.apis import decode_response_body
from .kafka.connection import KafkaPair
from .kafka.primitives import DecodeError
from .kafka.versions import LIST_OFFSETS, METADATA as METADATA_API
from .sinks.pairs import PairPrinter

TICK_NS = 100_000_000  # timers run at least this often in event time

# Annotation kinds: a process's identity (ProcessIdentity.to_dict()), and the answers of the agent's own
# questions to brokers ({"netns", "addr", "port", "version", "response": hex of the response body})
PROCESS = "process"
PROCESS_STATE = "process_state"  # {"pid", "state"}: the kernel's word on a consumer (identity/taskstate.py)
PROBE_NS = 100_000_000  # live: consumers' task states are read this often
STALE_HW_NS = 1_000_000_000  # a stopped consumer's partitions: ask their leader when nothing newer came


@runtime_checkable
class PairSink(Protocol):
    def pair(self, pair: KafkaPair, conn: ConnectionOpened | None) -> None:
        """Every decoded request/response pair, with its connection's open event (None if it was not seen)."""


@runtime_checkable
class BatchSink(Protocol):
    def batches(self, batches: Sequence, now_ns: int) -> None:
        """Produced and delivered batches, resolved (correlate.batches: ProducedBatch, DeliveredBatch)."""


@runtime_checkable
class TickSink(Protocol):
    def tick(self, now_ns: int) -> None:
        """Timers, in event time, at least every TICK_NS."""


@runtime_checkable
class ClosingSink(Protocol):
    def close(self) -> None:
        """The end of input: flush and let go."""


Sink = PairSink | BatchSink | TickSink


class Pipeline:
    def __init__(self, *, sinks: Iterable[Sink] = (), processes: ProcessDirectory | None = None,
                 correlator: Correlator | None = None, broker_traffic: bool = False,
                 on_annotation: Callable[[Annotation], None] | None = None, lookup=None,
                 discover_metadata: bool = True, poll_high_watermarks: bool = True) -> None:
        self.correlator = correlator if correlator is not None else Correlator()
        # One table of open connections, given to each part at its construction: the correlator's (its own, or
        # the one it was built with) is the one the decoder fills and the pair sinks read.
        self.connections: dict[int, ConnectionOpened] = self.correlator.connections
        # fastpath: the compiled core, or the Python decoder (--decoder)
        self.decoder = pipeline_decoder(self.connections)
        self.processes = processes or ProcessDirectory()
        self.broker_traffic = broker_traffic
        self.on_annotation = on_annotation
        self.lookup = lookup  # a BrokerLookup (the agent asking brokers), or None
        self.last_bad_answer: str | None = None  # the endpoint and the decoder's word on the latest bad answer
        self.discover_metadata = discover_metadata
        self.poll_high_watermarks = poll_high_watermarks
        self.sinks: list[Sink] = []
        self._pair_sinks: list[Callable[[KafkaPair, ConnectionOpened | None], None]] = []
        self._batch_sinks: list[Callable[[Sequence, int], None]] = []
        self._tick_sinks: list[Callable[[int], None]] = []
        for sink in sinks:
            self.add_sink(sink)
        self.now_ns = 0  # the latest event time seen
        self._next_tick = 0
        self._next_probe = 0
        self._task_states: dict[int, str] = {}  # pid -> its state last said (live)
        self.stats: Counter = Counter()
        self.tls = TlsConnections()  # connections by TLS stack; the undecoded ones of Kafka clients are reported
        self.on_tls_undecoded: Callable[[UndecodedTls], None] | None = None

    def add_sink(self, sink: Sink) -> None:
        if not isinstance(sink, (PairSink, BatchSink, TickSink)):
            raise TypeError(f"{type(sink).__name__} has none of a sink's hooks (pair, batches, tick)")
        self.sinks.append(sink)
        if isinstance(sink, PairSink):
            self._pair_sinks.append(sink.pair)
        if isinstance(sink, BatchSink):
            self._batch_sinks.append(sink.batches)
        if isinstance(sink, TickSink):
            self._tick_sinks.append(sink.tick)

    # --- input -----------------------------------------------------------------------------------

    def feed(self, event: StreamEvent) -> None:
        kind = type(event)
        ts = event.ts_ns
        if ts > self.now_ns:
            self.now_ns = ts
        if kind is ConnectionOpened:
            self._opened(event)
        elif kind is Annotation:
            self._annotation(event)
            return
        pairs = self.decoder.feed(event)
        if pairs:
            self._pairs(pairs)
        if kind is ConnectionClosed:
            self.connections.pop(event.conn_id, None)
            self.correlator.connection_closed(event.conn_id, ts)
        if self.now_ns >= self._next_tick:
            self.tick(self.now_ns)

    def run(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            self.feed(event)
        self.finish()

    def tick(self, now_ns: int | None = None) -> None:
        """Timers: parked batches whose wait is over, the agent's own lookups, sinks' periodic work."""
        if now_ns is None:
            now_ns = time.time_ns()
        self._next_tick = now_ns + TICK_NS
        for report in self.tls.due(now_ns):
            if self.on_tls_undecoded is not None:
                self.on_tls_undecoded(report)
        if self.lookup is not None:
            self._ask_brokers(now_ns)
        if self.processes.read_proc and now_ns >= self._next_probe:
            self._probe_tasks(now_ns)
        released = self.correlator.tick(now_ns)
        if released:
            self._emit_batches(released, now_ns)
        for tick in self._tick_sinks:
            tick(now_ns)

    def finish(self) -> None:
        """End of input: pairs still waiting, parked batches, sinks flushed and closed."""
        pairs = self.decoder.finish(self.now_ns)
        if pairs:
            self._pairs(pairs)
        rest = self.correlator.flush()
        if rest:
            self._emit_batches(rest, self.now_ns)
        for sink in self.sinks:
            if isinstance(sink, ClosingSink):
                sink.close()

    # --- internals -------------------------------------------------------------------------------

    def _opened(self, event: ConnectionOpened) -> None:
        processes = self.processes
        known = processes.peek(event.pid)
        ident = processes.get(event.pid, event.comm)
        if ident is not known and self.on_annotation is not None and processes.read_proc:
            self.on_annotation(Annotation(PROCESS, event.ts_ns, ident.to_dict()))
        if ident.is_kafka_broker:
            self.correlator.mark_broker(event.pid)
        args = ident.attributes.get("process.command_args") or ()
        self.tls.opened(event, ident.service_name, " ".join(args) if isinstance(args, list) else str(args),
                        str(ident.attributes.get("process.executable.name", "")))
        if self.lookup is not None:
            self.lookup.note_process(event.netns, event.pid)

    def _probe_tasks(self, now_ns: int) -> None:
        """Live: each consumer's task state; a change is an annotation (recorded, so a replay says the same)."""
        from .identity.taskstate import EXITED, task_state

        self._next_probe = now_ns + PROBE_NS
        tracker = self.correlator.lag
        pids = tracker.consumer_pids()
        for pid in [pid for pid in self._task_states if pid not in pids]:
            del self._task_states[pid]
        for pid in pids:
            state = task_state(pid)
            if state != self._task_states.get(pid, "running"):
                self._task_states[pid] = state
                if self.on_annotation is not None:
                    self.on_annotation(Annotation(PROCESS_STATE, now_ns, {"pid": pid, "state": state}))
                tracker.process_state(pid, state, now_ns)
                if state == EXITED:
                    self._task_states.pop(pid, None)

    def _annotation(self, note: Annotation) -> None:
        try:
            if note.kind == PROCESS_STATE:
                self.correlator.lag.process_state(int(note.data["pid"]), str(note.data["state"]), note.ts_ns)
            elif note.kind == PROCESS:
                self.processes.remember(ProcessIdentity.from_dict(note.data))
                ident = self.processes.peek(int(note.data["pid"]))
                if ident is not None and ident.is_kafka_broker:
                    self.correlator.mark_broker(ident.pid)
            elif note.kind in (METADATA, OFFSETS):
                d = note.data
                self._learn(note.kind, Endpoint(int(d["netns"]), str(d["addr"]), int(d["port"])), int(d["version"]),
                            bytes.fromhex(d["response"]), note.ts_ns, record=False)
            else:
                self.stats["unknown_annotations"] += 1
        except (KeyError, TypeError, ValueError, OverflowError):  # a damaged note: counted, never raised
            self.stats["bad_annotations"] += 1

    def _ask_brokers(self, now_ns: int) -> None:
        lookup = self.lookup
        wanted = self.correlator.wanted_endpoints()
        if self.discover_metadata:
            for endpoint in wanted:
                lookup.request(endpoint)
        if self.poll_high_watermarks:
            for endpoint, keys in self.correlator.lag.stale_partitions(now_ns, STALE_HW_NS).items():
                topics: dict[str, list[int]] = {}
                for key in keys:
                    topics.setdefault(key.topic, []).append(key.partition)
                lookup.request_offsets(endpoint, topics)
        for answer in lookup.results():
            self._learn(answer.kind, answer.endpoint, answer.version, answer.body, now_ns, record=True)

    def _learn(self, kind: str, endpoint: Endpoint, version: int, body: bytes, ts_ns: int, record: bool) -> None:
        """An answer to the agent's own question (live), or its note in a recording (replay)."""
        try:  # the decoding boundary of every body (kafka/apis.py): a message or a DecodeError
            response = decode_response_body(METADATA_API if kind == METADATA else LIST_OFFSETS, version,
                                            memoryview(body), 0)
        except DecodeError as exc:
            self.stats[f"bad_{kind}_answers"] += 1
            self.last_bad_answer = f"{endpoint.addr}:{endpoint.port}: {exc}"[:200]
            return
        if record and self.on_annotation is not None:
            self.on_annotation(Annotation(kind, ts_ns, {"netns": endpoint.netns, "addr": endpoint.addr,
                                                        "port": endpoint.port, "version": version,
                                                        "response": body.hex()}))
        self.stats[f"{kind}_answers_applied"] += 1
        if kind == OFFSETS:
            self.correlator.learn_offsets(endpoint, response, ts_ns)
            return
        released = self.correlator.learn_metadata(endpoint, response, ts_ns)
        if released:
            self._emit_batches(released, ts_ns)

    def _pairs(self, pairs) -> None:
        correlator = self.correlator
        opened = self.connections
        pair_sinks = self._pair_sinks
        for pair in pairs:
            batches = correlator.on_pair(pair)
            if batches:
                self._emit_batches(batches, pair.response_ts_ns or pair.request_ts_ns)
            if pair_sinks:
                if not self.broker_traffic and correlator.is_broker_pair(pair):
                    self.stats["broker_pairs_left_out"] += 1
                    continue
                conn = opened.get(pair.conn_id)
                for sink in pair_sinks:
                    sink(pair, conn)

    def _emit_batches(self, batches, now_ns: int) -> None:
        for sink in self._batch_sinks:
            sink(batches, now_ns)


def run_trace(events: Iterable[StreamEvent], args: argparse.Namespace, out: TextIO, *,
              processes: ProcessDirectory | None = None, broker_traffic: bool = False) -> int:
    """`trace` and `replay`: print the pairs of `events`."""
    pipeline = Pipeline(processes=processes, broker_traffic=broker_traffic)
    pipeline.add_sink(PairPrinter(args, out, pipeline.correlator.topics, pipeline.connections))
    as_json = bool(getattr(args, "json", False))
    pipeline.on_tls_undecoded = lambda r: out.write((json.dumps(r.to_dict()) if as_json else r.text()) + "\n")
    try:
        pipeline.run(events)
    except BrokenPipeError:  # `... | head`
        return 0
    finally:
        if getattr(args, "stats", False):
            stats = dict(sorted(pipeline.decoder.summary().items()))
            print(json.dumps({"decoder": stats}), file=sys.stderr)
    return 0
