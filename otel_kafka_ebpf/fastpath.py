"""The decoder with its compiled hot path (native/, built into `otel_kafka_ebpf._core`), or without it.

`CoreStreamDecoder` has the interface of `kafka.KafkaStreamDecoder` (feed, finish, summary, opened, stats) and
gives the same pairs, field for field: the core takes a connection while its bytes come in order without
gaps (frames, request heads, Produce and Fetch bodies, pairing), and every body it does not read goes to the
Python decoder whole. At the first event the core cannot take exactly as the Python decoder would (a gap, a
mid-stream join, bytes that are not Kafka frames, a skip that is not a whole digest frame), the connection's
state moves into a `KafkaConnection` that goes on from there. tests/unit/kafka/test_core_differential.py holds
the two to the same pairs.

`make_decoder(choice)` is the one switch: "python" (the oracle), "core", or "auto" (the core when built).
"""

from __future__ import annotations

import os
import sys
from collections import Counter, deque

from .capture.streams import ConnectionClosed, ConnectionOpened, Role, StreamData, StreamGap
from .kafka import connection as kc
from .kafka import fetch, produce, records
from .kafka.apis import UnsupportedApi, decode_request_body
from .kafka.counters import REQUEST_FRAMES, RESPONSE_FRAMES, malformed_request_api, unsupported_api
from .kafka.frames import Frame
from .kafka.headers import RequestHeader
from .kafka.primitives import DecodeError
from .kafka.versions import API_TABLE, FLEXIBLE_FROM

try:
    from . import _core
except ImportError as exc:  # not built (make native): the pure-Python decoder does everything
    _core = None
    CORE_MISSING = f"the compiled core is not built ({exc}); run `make native`"
else:
    CORE_MISSING = None

DECODERS = ("auto", "core", "python")
ENV = "OKE_DECODER"  # the setting's environment variable; `--decoder` wins over it
_new = tuple.__new__


class _StatsOwner:
    """What KafkaConnection._decode_response needs of its connection: the stats to count in."""

    __slots__ = ("stats",)

    def __init__(self, stats: Counter) -> None:
        self.stats = stats


def _parts(stats: Counter) -> dict:
    owner = _StatsOwner(stats)
    decode_response_of = kc.KafkaConnection._decode_response  # the very code the Python decoder runs

    def decode_request(api_key: int, version: int, payload: bytes, pos: int, skips: tuple):
        """connection._on_request's body decoding, for a frame the core does not read itself."""
        try:
            return decode_request_body(api_key, version, memoryview(payload), pos, skips), None
        except UnsupportedApi:
            stats[unsupported_api(api_key, version)] += 1
            return None, kc.UNSUPPORTED
        except DecodeError:
            stats[malformed_request_api(api_key)] += 1
            return None, kc.MALFORMED

    def decode_response(api_key: int, version: int, payload: bytes, skips: tuple):
        header = _new(RequestHeader, (api_key, version, 0, None))
        return decode_response_of(owner, header, memoryview(payload), skips)

    return {
        "KafkaPair": kc.KafkaPair,
        "ProduceRequest": produce.ProduceRequest, "ProduceRequestPartition": produce.ProduceRequestPartition,
        "ProduceResponse": produce.ProduceResponse, "ProduceResponsePartition": produce.ProduceResponsePartition,
        "FetchRequest": fetch.FetchRequest, "FetchRequestPartition": fetch.FetchRequestPartition,
        "ForgottenTopic": fetch.ForgottenTopic, "FetchResponse": fetch.FetchResponse,
        "FetchResponsePartition": fetch.FetchResponsePartition, "AbortedTransaction": fetch.AbortedTransaction,
        "RecordBatch": records.RecordBatch, "FetchSession": fetch.FetchSession,
        "api_keys": list(API_TABLE), "flexible_from": dict(FLEXIBLE_FROM),
        "decode_request": decode_request, "decode_response": decode_response,
        "decode_client_id": lambda raw: raw.decode("utf-8", "replace"),
        "LOST": kc.LOST, "NO_RESPONSE": kc.NO_RESPONSE,
    }


_CORE = object()  # connections' entry while the core has them


class CoreStreamDecoder:
    """All connections of a capture, the plain ones in the compiled core: stream events in, `KafkaPair`s out."""

    def __init__(self, opened: dict[int, ConnectionOpened] | None = None) -> None:
        """`opened`: the table of open connections to keep (shared with the correlator), else a new one."""
        if _core is None:
            raise RuntimeError(CORE_MISSING)
        self.connections: dict[int, object] = {}  # conn id -> _CORE or its KafkaConnection, in the order seen
        self.opened: dict[int, ConnectionOpened] = {} if opened is None else opened
        self.stats: Counter = Counter()
        self.core = _core.Core(_parts(self.stats), self.stats)
        self.handed_over = 0  # connections the core gave to the Python decoder

    def feed(self, event) -> list:
        kind = type(event)
        if kind is StreamData:
            cid = event.conn_id
            conn = self.connections.get(cid)
            if conn is None:  # data before (or without) its open event: a client connection, as in Python
                conn = self._open(cid, Role.CLIENT)
            if conn is _CORE:
                out = self.core.feed_data(cid, event.direction, event.offset, event.data, event.ts_ns,
                                          event.last_ts_ns, event.skips, event.skip_reason)
                if out is not None:
                    return out
                conn = self._hand_over(cid)
            conn.feed_data(event.direction, event.offset, event.data, event.ts_ns, event.frame_start,
                           event.last_ts_ns, event.skips, event.skip_reason)
        elif kind is StreamGap:
            cid = event.conn_id
            conn = self.connections.get(cid)
            if conn is None:
                conn = self._open(cid, Role.CLIENT)
            if conn is _CORE:
                conn = self._hand_over(cid)
            conn.feed_gap(event.direction, event.offset, event.length, event.ts_ns, event.reason)
        elif kind is ConnectionOpened:
            self.opened[event.conn_id] = event
            out = self._close(event.conn_id, kc.LOST) if event.conn_id in self.connections else []
            self._open(event.conn_id, Role.SERVER if event.role == Role.SERVER else Role.CLIENT)
            return out
        elif kind is ConnectionClosed:
            return self._close(event.conn_id, kc.LOST) if event.conn_id in self.connections else []
        else:
            return []
        events = []
        while (ev := conn.next_event()) is not kc.NEED_DATA:
            events.append(ev)
        return events

    def feed_all(self, events):
        for event in events:
            yield from self.feed(event)

    def finish(self, ts_ns: int = 0) -> list:
        out = []
        for cid in list(self.connections):
            out.extend(self._close(cid, kc.IN_FLIGHT))
        return out

    def summary(self) -> Counter:
        total = Counter(self.stats)
        requests, responses = self.core.frame_counts()
        if requests:
            total[REQUEST_FRAMES] += requests
        if responses:
            total[RESPONSE_FRAMES] += responses
        for conn in self.connections.values():
            if conn is not _CORE:
                total.update(conn.splitter_counters())
        return total

    # --- internals ---------------------------------------------------------------------------

    def _open(self, cid: int, role: Role):
        self.core.open(cid, role == Role.SERVER)
        self.connections[cid] = _CORE
        return _CORE

    def _close(self, cid: int, unanswered: str) -> list:
        conn = self.connections.pop(cid)
        if conn is _CORE:
            out = self.core.close(cid, unanswered)
            if out is not None:
                return out
            conn = self._hand_over(cid)
            del self.connections[cid]
        return kc.KafkaStreamDecoder._drain(conn, 0, unanswered)

    def _hand_over(self, cid: int) -> kc.KafkaConnection:
        """The core's state of a connection, into a Python KafkaConnection that goes on from it."""
        state = self.core.take(cid)
        conn = kc.KafkaConnection(cid, Role.SERVER if state["server"] else Role.CLIENT, self.stats)
        for api_key, version, corr, client_id, request, ts, end_ts, error, fetch_offsets in state["pending"]:
            header = _new(RequestHeader, (api_key, version, corr, client_id))
            conn.pending.append(kc._Pending(header, request, ts, end_ts, error, fetch_offsets, 0))
            conn.pending_ids[corr] = conn.pending_ids.get(corr, 0) + 1
        conn.client_id = state["client_id"]
        conn.client_id_bytes = state["client_id_bytes"]
        conn.last_correlation_id = state["last_correlation_id"]
        conn.seen_versions = state["seen_versions"]
        conn.fetch_session = state["fetch_session"]
        conn._early = deque((corr, _new(Frame, (0, memoryview(payload), first, last, skips)))
                            for corr, payload, first, last, skips in state["early"])
        for splitter, (end, frames, pieces) in ((conn.requests, state["requests"]), (conn.responses, state["responses"])):
            start = pieces[0][0] if pieces else end
            splitter._end = splitter._pos = start
            splitter.frames = frames
            for offset, data, ts, last in pieces:  # the frame being assembled, as it came
                splitter.feed_data(offset, data, ts, False, last)
        self.connections[cid] = conn
        self.handed_over += 1
        return conn


def make_decoder(choice: str = "auto", opened: dict[int, ConnectionOpened] | None = None):
    """The stream decoder for `--decoder`: (decoder, a line to tell the user or None). `opened`: the table of
    open connections it keeps (shared with the correlator), else a new one."""
    if choice not in DECODERS:
        raise ValueError(f"decoder {choice!r}: expected one of {', '.join(DECODERS)}")
    if choice == "python":
        return kc.KafkaStreamDecoder(opened), None
    if _core is None:
        if choice == "core":
            raise RuntimeError(CORE_MISSING)
        return kc.KafkaStreamDecoder(opened), f"decoder = python: {CORE_MISSING}"
    return CoreStreamDecoder(opened), None


_choice = os.environ.get(ENV, "auto")
_told = False


def set_choice(choice: str) -> None:
    """`--decoder`: the decoder every pipeline of this process uses from now on."""
    global _choice
    if choice not in DECODERS:
        raise ValueError(f"decoder {choice!r}: expected one of {', '.join(DECODERS)}")
    _choice = choice


def pipeline_decoder(opened: dict[int, ConnectionOpened] | None = None):
    """The decoder of the chosen kind (OKE_DECODER, `--decoder`); without the core, one line says so, once.
    `opened`: the table of open connections it keeps (shared with the correlator), else a new one."""
    decoder, note = make_decoder(_choice if _choice in DECODERS else "auto", opened)
    if note and not _told:
        def first_feed(event):  # said with the first event decoded, not before a command's own errors
            global _told
            del decoder.feed
            if not _told:
                _told = True
                print(f"otel-kafka-ebpf: {note}", file=sys.stderr, flush=True)
            return decoder.feed(event)
        decoder.feed = first_feed
    return decoder
