"""Per-connection request/response correlation: captured bytes in both directions -> `KafkaPair` events.

The decoder does no I/O and keeps no clock: it is handed what the capture saw and hands back what it
made of it. One `KafkaConnection` is one TCP connection; `KafkaStreamDecoder` keeps one per connection
id and takes the capture's stream events (`capture.streams`) whole.

Using a connection
------------------
::

    conn = KafkaConnection(conn_id, Role.CLIENT)  # Role.SERVER: the traced process is the broker
    for ev in events_of_the_connection:           # capture.streams.StreamData and StreamGap
        if isinstance(ev, StreamData):
            conn.feed_data(ev.direction, ev.offset, ev.data, ev.ts_ns)
        else:
            conn.feed_gap(ev.direction, ev.offset, ev.length, ev.ts_ns, ev.reason)
        while (pair := conn.next_event()) is not NEED_DATA:
            handle(pair)                          # always a KafkaPair
    conn.close(end_ts_ns)                         # the connection ended: what it ends comes out
    while (pair := conn.next_event()) is not NEED_DATA:
        handle(pair)

`feed_data(direction, offset, data, ts_ns, ...)`
    Accepts the bytes one direction moved, at `offset` in that direction's stream (offsets count every
    byte the socket moved, captured or not). Any split is fine: a frame in one piece, a byte at a time,
    several frames at once; with the same times for the same bytes, the events are the same. Both directions may be fed in any interleaving;
    a response that comes before its request waits for it (up to `MAX_EARLY`). Bytes past the end
    seen so far mean the bytes between were not captured: a loss, taken as `feed_gap` without a reason
    takes it (though not added to `gap_bytes`); bytes before it overlap what was fed: only their new tail
    is taken (`*_overlaps`). Returns None; whatever the bytes complete waits for `next_event`.
`feed_gap(direction, offset, length, ts_ns, reason)`
    Accepts `length` stream bytes that moved but were not captured. With a `reason` in
    `DECLARED_SKIPS` they were left in the kernel on purpose inside a frame whose size was seen (a
    digest's records, a SASL body, a frame's body after its head): the frame still comes out, decoded
    around the hole. Any other gap is a loss: the frame it cuts is reported `TRUNCATED`, a gap that
    swallows a frame boundary makes the decoder hunt for the next request (response) start, and
    requests whose response may lie in it are reported `LOST` once a later response shows it.
    Returns None.
`next_event()`
    Returns the oldest `KafkaPair` the input so far completed, removing it, or `NEED_DATA` when there is
    none: nothing more can come out until more is fed (or the connection is closed). Call it until it
    returns `NEED_DATA` after each feed; events left waiting are not lost, only late. There is no paused
    state: every call to feed is taken at once, whatever is still waiting.
`close(ts_ns, unanswered=LOST)`
    The connection (or, with `unanswered=IN_FLIGHT`, the input) ended: frames cut off by the end are
    reported `TRUNCATED`, every request still waiting for its response is reported with `unanswered`,
    and the splitters' counters move into `stats`. Feed nothing afterwards.

Events
------
Only `KafkaPair`: one request and its response, made when the response arrives, or when it is known
that none will (a later response, a gap, too many waiting, acks=0, the end). `request` and `response`
are typed messages (e.g. `ProduceRequest`, `FetchResponse`) or None; when one is None, its
`request_error` / `response_error` says why, one of `MISSING_REASONS`: `LOST`, `TRUNCATED`,
`NO_RESPONSE` (Produce with acks=0), `UNSUPPORTED` (an api version without a body decoder),
`IN_FLIGHT`, `MALFORMED` (bytes that do not decode as the api and version they claim) and `HEADS_ONLY`
(only the frame's head was captured). One side may carry an error while the other was decoded (a
`MALFORMED` request and its decoded response, say).

Errors
------
Nothing in the bytes or gaps fed raises: garbage, lies in size fields, frames of other protocols,
overlaps and losses are decoded as far as they go and counted in `stats` (a `Counter`, names from
`kafka.counters`, where `is_problem` tells the problems), and pairs are made with the declared reasons
above. No pair is better than a wrong one: when it cannot be told which request a response answers
(a correlation id reused across a gap), the request is reported `LOST` and the response dropped
(`ambiguous_responses`). Only misuse raises (arguments of the wrong type).

Kafka answers the requests of one connection in order, so a response for correlation id N also tells
which earlier requests lost their response in a gap, and requests that reuse an id (a client may) are
answered in the order they were sent.
"""

from __future__ import annotations

import re
import struct
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeAlias

from ..capture.streams import (
    DECLARED_SKIPS, ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamEvent,
    StreamGap,
)
from . import fetch
from .apis import UnsupportedApi, decode_request_body, decode_response_body
from .counters import (AMBIGUOUS_RESPONSES, GAP_BYTES, HEADS_ONLY_REQUESTS, HEADS_ONLY_RESPONSES, LOST_RESPONSES,
                       MALFORMED_REQUEST_HEADERS, MALFORMED_RESPONSE_HEADERS, PENDING_OVERFLOW, SASL_TOKENS,
                       SKIPPED_ON_PURPOSE_BYTES, SPLITTER, TRUNCATED_REQUESTS, TRUNCATED_RESPONSES,
                       UNMATCHED_RESPONSES, malformed_request_api, malformed_response_api, unsupported_api)
from .frames import ACCEPT, MAX_FRAME, NEED_DATA, NEED_MORE, REJECT, Frame, FrameLost, FrameSplitter, NeedData
from .headers import RequestHeader, read_request_header, read_response_correlation_id, response_body_position
from .primitives import DecodeError
from .versions import API_TABLE, FETCH, MAX_API_VERSION, PRODUCE, response_header_version

__all__ = ["KafkaPair", "KafkaConnection", "KafkaStreamDecoder", "NEED_DATA", "MISSING_REASONS", "LOST", "TRUNCATED",
           "NO_RESPONSE", "UNSUPPORTED", "IN_FLIGHT", "MALFORMED", "HEADS_ONLY"]

MAX_PENDING = 1024  # outstanding requests kept per connection; clients pipeline far fewer
# A response may reach the decoder just before its request: with one thread writing and another
# reading, the request's syscall can end (and be captured) after the response was read. A few such
# responses wait for their request.
MAX_EARLY = 8

# Why a side of a pair has no decoded message
LOST = "lost"  # its bytes fell in a capture gap
TRUNCATED = "truncated"  # its frame was cut after the header, by a gap or the end of the stream
NO_RESPONSE = "no_response"  # Produce with acks=0: none is sent
UNSUPPORTED = "unsupported"  # api key or version not decoded (skipped by length)
IN_FLIGHT = "in_flight"  # still waiting for its response when the input ended (a consumer's long poll)
MALFORMED = "malformed"  # bytes that do not decode as the api/version they claim
HEADS_ONLY = "heads_only"  # only its head was captured: the fallback program (a kernel refused the walker)
MISSING_REASONS = frozenset({LOST, TRUNCATED, NO_RESPONSE, UNSUPPORTED, IN_FLIGHT, MALFORMED, HEADS_ONLY})

Data: TypeAlias = bytes | bytearray | memoryview  # captured bytes, as the capture hands them over
Skips: TypeAlias = tuple[tuple[int, int], ...]  # (position in the data, stream bytes left out there)


class KafkaPair(NamedTuple):
    """One request and its response (or the reason there is none): the decoder's only event.

    `request_error` / `response_error` is None when that side was decoded, else one of `MISSING_REASONS`.
    """

    conn_id: int
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    request: object | None  # a typed message, e.g. ProduceRequest
    response: object | None
    request_ts_ns: int  # capture time of the request's first byte
    response_ts_ns: int | None  # capture time of the response's last byte
    request_error: str | None
    response_error: str | None
    fetch_offsets: dict | None  # Fetch: (topic key, partition) -> offset asked, incl. session state
    request_end_ts_ns: int | None = None  # capture time of the request's last byte
    response_start_ts_ns: int | None = None  # capture time of the response's first byte


class _Pending:
    __slots__ = ("header", "request", "ts_ns", "end_ts_ns", "error", "fetch_offsets", "request_gaps")

    def __init__(self, header: RequestHeader, request, ts_ns: int, end_ts_ns: int | None, error: str | None,
                 fetch_offsets: dict | None = None, request_gaps: int = 0) -> None:
        self.header = header
        self.request = request
        self.ts_ns = ts_ns
        self.end_ts_ns = end_ts_ns  # None when the request's end was not captured
        self.error = error
        self.fetch_offsets = fetch_offsets  # Fetch: the session's offsets as of this request
        self.request_gaps = request_gaps  # request-direction gaps before it (on its connection)


_REQ_PREFIX = struct.Struct(">ihhih")  # size, api_key, api_version, correlation_id, client id length
_RESP_PREFIX = struct.Struct(">ii")  # size, correlation_id
_h = struct.Struct(">h").pack
_i = struct.Struct(">i").pack
_client_id_length = struct.Struct(">h").unpack_from
_new = tuple.__new__  # NamedTuple construction without its Python-level __new__ (hot path)


# Where a request of a connection we know nothing about may start: a size below MAX_FRAME, a known
# api key, a version up to MAX_API_VERSION, a correlation id >= 0, a client id length >= -1. The
# regular expression only narrows where `check` looks (it accepts every position `check` could).
_REQUEST_START = re.compile(
    b"(?=[\\x00-" + re.escape(bytes([MAX_FRAME >> 24])) + b"][\\s\\S]{3}\\x00["
    + b"".join(re.escape(bytes([k])) for k in sorted(API_TABLE) if k < 256)
    + b"]\\x00[\\x00-" + re.escape(bytes([MAX_API_VERSION])) + b"][\\x00-\\x7f][\\s\\S]{3}(?:[\\x00-\\x7f]|\\xff\\xff))")


class _RequestValidator:
    """Decides whether bytes after a lost boundary start a request of this connection."""

    window = _REQ_PREFIX.size

    def __init__(self, conn: "KafkaConnection") -> None:
        self.conn = conn

    def find(self, buf: bytes, start: int) -> int:
        n = len(buf)
        client = self.conn.client_id_bytes
        if client is None:
            if self.conn.last_correlation_id is None:  # nothing known about this connection
                m = _REQUEST_START.search(buf, start)
                return m.start() if m else max(start, n - self.window + 1)
            needle = b"\xff\xff"  # a null client id
        else:
            needle = _h(len(client)) + client
        # Every request of a connection repeats its client id 12 bytes after the frame start.
        idx = buf.find(needle, start + 12)
        if idx >= 0:
            return idx - 12
        # Near the end the needle may be incomplete: a position is possible only if the bytes there begin it
        # (one test per occurrence of its length field, not one per position: a long client id would
        # otherwise cost its length squared per hunt).
        last = n - self.window  # the last position whose quick test has its bytes
        q = max(start, n - 12 - len(needle) + 1)
        while q <= last:
            idx = buf.find(needle[:2], q + 12)
            if idx < 0 or idx - 12 > last:
                break
            if needle.startswith(buf[idx:]):
                return idx - 12
            q = idx - 11
        return max(start, last + 1)

    def check(self, buf: bytes, p: int) -> int:
        conn = self.conn
        if len(buf) - p < self.window:
            return NEED_MORE
        size, api_key, version, corr, clen = _REQ_PREFIX.unpack_from(buf, p)
        if size < 10 or size > MAX_FRAME or api_key not in API_TABLE or not 0 <= version <= MAX_API_VERSION:
            return REJECT
        if corr < 0 or clen < -1 or clen > size - 10:
            return REJECT
        last = conn.last_correlation_id
        if last is not None and not last < corr <= last + (1 << 20):
            return REJECT
        known_client = conn.client_id_bytes
        if known_client is not None and clen != len(known_client):
            return REJECT
        if len(buf) - p - 4 < size:
            return NEED_MORE
        frame = memoryview(buf)[p + 4:p + 4 + size]
        try:
            header, pos = read_request_header(frame)
        except DecodeError:
            return REJECT
        if known_client is not None and header.client_id != conn.client_id:
            return REJECT
        try:
            decode_request_body(api_key, version, frame, pos)
        except UnsupportedApi:
            # Nothing to check the body against: go on only with a header that matches what we know.
            if known_client is None and last is None:
                return REJECT
        except DecodeError:
            return REJECT
        return self._next_agrees(buf, p + 4 + size, corr, clen)

    def _next_agrees(self, buf: bytes, q: int, corr: int, clen: int) -> int:
        """A validated candidate is confirmed by the header of the frame after it (a later request
        of the same client); until that header arrives the candidate waits."""
        if len(buf) - q < self.window:
            return NEED_MORE
        size, api_key, version, next_corr, next_clen = _REQ_PREFIX.unpack_from(buf, q)
        if (10 <= size <= MAX_FRAME and api_key in API_TABLE and 0 <= version <= MAX_API_VERSION
                and corr < next_corr <= corr + (1 << 20) and next_clen == clen):
            return ACCEPT
        return REJECT


class _ResponseValidator:
    """Decides whether bytes after a lost boundary start the response to an outstanding request."""

    window = _RESP_PREFIX.size

    def __init__(self, conn: "KafkaConnection") -> None:
        self.conn = conn

    def find(self, buf: bytes, start: int) -> int:
        n = len(buf)
        best = max(start, n - self.window + 1)
        for corr in self.conn.pending_ids:
            idx = buf.find(_i(corr), start + 4, best + 8)
            if idx >= 0 and idx - 4 < best:
                best = idx - 4
        return best

    def check(self, buf: bytes, p: int) -> int:
        if len(buf) - p < self.window:
            return NEED_MORE
        size, corr = _RESP_PREFIX.unpack_from(buf, p)
        pending = self.conn.first_pending(corr)
        if pending is None or size < 4 or size > MAX_FRAME:
            return REJECT
        if len(buf) - p - 4 < size:
            return NEED_MORE
        frame = memoryview(buf)[p + 4:p + 4 + size]
        h = pending.header
        try:
            pos = response_body_position(frame, response_header_version(h.api_key, h.api_version))
            decode_response_body(h.api_key, h.api_version, frame, pos)
        except UnsupportedApi:
            pass  # the correlation id of an outstanding request is all there is to check
        except DecodeError:
            return REJECT
        return self._next_agrees(buf, p + 4 + size, corr)

    def _next_agrees(self, buf: bytes, q: int, corr: int) -> int:
        """A validated candidate is confirmed by the frame after it: the response to a request sent
        later (Kafka answers in order). Until that header arrives the candidate waits."""
        if len(buf) - q < self.window:
            return NEED_MORE
        size, next_corr = _RESP_PREFIX.unpack_from(buf, q)
        if not 4 <= size <= MAX_FRAME:
            return REJECT
        later = False
        for pending in self.conn.pending:
            pending_corr = pending.header.correlation_id
            if later and pending_corr == next_corr:
                return ACCEPT
            if pending_corr == corr:
                later = True
        return REJECT


class KafkaConnection:
    """Decoder state of one TCP connection; the traced process is the client unless role says so.

    `conn_id` goes into every pair made; `stats` is the Counter to count in (several connections may
    share one), a new one when None. The contract of the public calls is in the module's docstring.
    """

    __slots__ = ("conn_id", "role", "requests", "responses", "pending", "pending_ids", "ambiguous_ids",
                 "request_gaps", "seen_versions", "client_id", "client_id_bytes", "last_correlation_id",
                 "fetch_session", "stats", "heads_only", "_events", "_early")

    def __init__(self, conn_id: int, role: Role = Role.CLIENT, stats: Counter | None = None) -> None:
        self.conn_id = conn_id
        self.role = role
        self.requests = FrameSplitter(_RequestValidator(self))
        self.responses = FrameSplitter(_ResponseValidator(self))
        self.pending: deque[_Pending] = deque()  # requests awaiting their responses, in the order sent
        self.pending_ids: dict[int, int] = {}  # correlation id -> how many of them are pending
        # Reused ids whose pending requests a response can no longer be told apart for: a gap may hide a
        # response (or a request) with the same id. Their responses are not paired (null, never wrong).
        self.ambiguous_ids: set[int] = set()
        self.request_gaps = 0
        self.seen_versions: set[tuple[int, int]] = set()
        self.client_id: str | None = None
        self.client_id_bytes: bytes | None = None
        self.last_correlation_id: int | None = None
        self.fetch_session = fetch.FetchSession()
        self.stats = stats if stats is not None else Counter()
        # The capture copies frame heads only (GapReason.HEADS): bodies are not decoded, pairs are still made
        self.heads_only = False
        self._events: deque[KafkaPair] = deque()
        self._early: deque[tuple[int, Frame]] = deque()  # (correlation id, response) ahead of its request

    def _splitter(self, direction: Direction) -> tuple[FrameSplitter, bool]:
        sends_requests = self.role != Role.SERVER
        is_request = (direction == Direction.SEND) == sends_requests
        return (self.requests if is_request else self.responses), is_request

    def feed_data(self, direction: Direction, offset: int, data: Data, ts_ns: int, frame_start: bool = False,
                  last_ts_ns: int | None = None, skips: Skips = (), skip_reason: GapReason | None = None) -> None:
        """Captured bytes of `direction` (relative to the traced process), `data[0]` at stream `offset`.

        `ts_ns`: when the (first) syscall moved them; `last_ts_ns`: the last one, when several did (None:
        the same). `frame_start`: the capture knows `data[0]` begins a frame (ends a hunt after a lost
        boundary). `skips`: (position in `data`, stream bytes) ranges left in the kernel on purpose inside
        these bytes, for `skip_reason` (a `DECLARED_SKIPS` reason). The view `data` may be kept by the
        events made from it; do not change its bytes. Never raises for what the bytes hold; returns None
        (pull the events with `next_event`)."""
        splitter, is_request = self._splitter(direction)
        if skip_reason is GapReason.HEADS:
            self.heads_only = True
        gap_bytes = splitter.gap_bytes
        splitter.feed_data(offset, data, ts_ns, frame_start, last_ts_ns, skips)
        if skips:
            self.stats[SKIPPED_ON_PURPOSE_BYTES] += skips[0][1] if len(skips) == 1 else sum(n for _, n in skips)
        if splitter.gap_bytes != gap_bytes:  # the offset jumped: a gap no event announced
            self._after_gap(is_request)
        self._pull(splitter, is_request)

    def feed_gap(self, direction: Direction, offset: int, length: int, ts_ns: int,
                 reason: GapReason | None = None) -> None:
        """`length` bytes of `direction` at stream `offset` that moved at `ts_ns` and were not captured.

        A `reason` in `DECLARED_SKIPS` inside a frame whose size was seen is a hole in that frame, no loss
        (counted as `skipped_on_purpose_bytes`); anything else is a loss (`gap_bytes`), reported in the
        pairs it touches as `TRUNCATED` or `LOST`. Never raises; returns None."""
        splitter, is_request = self._splitter(direction)
        if reason is GapReason.HEADS:
            self.heads_only = True
        if reason in DECLARED_SKIPS:  # left in the kernel on purpose: a hole in the frame, no loss
            if splitter.feed_skip(offset, length, ts_ns):
                self.stats[SKIPPED_ON_PURPOSE_BYTES] += length
                self._pull(splitter, is_request)
                return
        else:
            splitter.feed_gap(offset, length, ts_ns)
        self.stats[GAP_BYTES] += length
        self._after_gap(is_request)
        self._pull(splitter, is_request)

    def _after_gap(self, is_request: bool) -> None:
        if is_request:
            self.request_gaps += 1
            self.fetch_session.invalidate()  # a lost incremental request would leave stale offsets
        else:  # the gap may hold the response to any pending request: where ids repeat, which one is unknown
            self.ambiguous_ids.update(corr for corr, n in self.pending_ids.items() if n > 1)

    def close(self, ts_ns: int, unanswered: str = LOST) -> None:
        """The connection ended (or the input did: `unanswered` IN_FLIGHT): frames cut off by the end are
        reported truncated, and outstanding requests get no response, for the reason `unanswered`.

        The pairs are then waiting for `next_event`; the splitters' counters are in `stats`. `ts_ns` is
        when it ended (the pairs carry the times of their own bytes). Feed the connection nothing after."""
        for splitter, is_request in ((self.responses, False), (self.requests, True)):
            splitter.end()
            self._pull(splitter, is_request)
        for pending in self.pending:
            self._emit_unanswered(pending, unanswered)
        self.pending.clear()
        self.pending_ids.clear()
        self.ambiguous_ids.clear()
        if self._early:
            self.stats[UNMATCHED_RESPONSES] += len(self._early)
            self._early.clear()
        self.stats.update(self.splitter_counters())
        self.requests = FrameSplitter(_RequestValidator(self))  # counters are now in stats
        self.responses = FrameSplitter(_ResponseValidator(self))

    def splitter_counters(self) -> Counter:
        """The frame splitters' counts not yet in `stats` (they move there at `close`), by counter name."""
        counters = Counter()
        requests, responses = self.requests, self.responses
        for count, request_name, response_name in SPLITTER:
            value = getattr(requests, count)
            if value:
                counters[request_name] += value
            value = getattr(responses, count)
            if value:
                counters[response_name] += value
        return counters

    def next_event(self) -> KafkaPair | NeedData:
        """The oldest pair not yet handed out, or `NEED_DATA` when there is none until more is fed or the
        connection is closed. Never raises."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    # --- internals ---------------------------------------------------------------------------

    def _pull(self, splitter: FrameSplitter, is_request: bool) -> None:
        out = splitter.events
        if not out:
            return
        on_frame = self._on_request if is_request else self._on_response
        on_lost = self._on_request_lost if is_request else self._on_response_lost
        while out:
            event = out.popleft()
            if type(event) is Frame:
                on_frame(event)
            else:
                on_lost(event)

    def _on_request(self, frame: Frame) -> None:
        stats = self.stats
        payload = frame.payload
        if not payload and frame.skips:  # a raw SASL token (after SaslHandshake v0), never copied
            stats[SASL_TOKENS] += 1
            return
        try:
            header, pos = read_request_header(payload)
        except DecodeError:
            header = None
        if header is None or header.api_key not in API_TABLE or not 0 <= header.api_version <= MAX_API_VERSION:
            stats[MALFORMED_REQUEST_HEADERS] += 1
            self.requests.lose_sync()  # not a request: the frame boundary was wrong
            return
        self._learn(header, payload)
        request = error = None
        if self.heads_only and frame.skips:  # the body stayed in the kernel
            stats[HEADS_ONLY_REQUESTS] += 1
            self._add_pending(header, None, frame.first_ts_ns, frame.last_ts_ns, HEADS_ONLY)
            return
        try:
            request = decode_request_body(header.api_key, header.api_version, payload, pos, frame.skips)
        except UnsupportedApi:
            stats[unsupported_api(header.api_key, header.api_version)] += 1
            error = UNSUPPORTED
        except DecodeError:
            stats[malformed_request_api(header.api_key)] += 1
            error = MALFORMED
        api_key = header.api_key
        if api_key == PRODUCE and request is not None and request.acks == 0:
            self._pair(header, frame.first_ts_ns, request=request, response_error=NO_RESPONSE,
                       request_end_ts_ns=frame.last_ts_ns)
            return
        fetch_offsets = None
        if api_key == FETCH and request is not None:
            fetch_offsets = self.fetch_session.on_request(request)
        self._add_pending(header, request, frame.first_ts_ns, frame.last_ts_ns, error, fetch_offsets)

    def _on_request_lost(self, lost: FrameLost) -> None:
        self.stats[TRUNCATED_REQUESTS] += 1
        try:
            header, _ = read_request_header(lost.head)
        except DecodeError:
            return
        if header.api_key not in API_TABLE or not 0 <= header.api_version <= MAX_API_VERSION:
            return
        self._learn(header, lost.head)
        self._add_pending(header, None, lost.first_ts_ns, None, TRUNCATED)

    def _learn(self, header: RequestHeader, frame) -> None:
        """What the validator of this connection's requests looks for after a lost boundary; `frame` is the
        request's payload, whose header `header` was read from."""
        self.seen_versions.add((header.api_key, header.api_version))
        self.last_correlation_id = header.correlation_id
        if header.client_id != self.client_id or self.client_id_bytes is None:
            self.client_id = header.client_id
            # The client id as the wire has it, not the text encoded again: bytes that are not UTF-8 decode to
            # U+FFFD, whose encoding is other bytes, up to three times as many (beyond an int16 length).
            self.client_id_bytes = None if header.client_id is None else \
                bytes(frame[10:10 + _client_id_length(frame, 8)[0]])

    def _add_pending(self, header: RequestHeader, request, ts_ns: int, end_ts_ns: int | None, error: str | None,
                     fetch_offsets: dict | None = None) -> None:
        pending = self.pending
        corr = header.correlation_id
        ids = self.pending_ids
        waiting = ids.get(corr, 0)
        if waiting and self.first_pending(corr).request_gaps != self.request_gaps:
            self.ambiguous_ids.add(corr)  # a request gap since the pending one may hide a third with this id
        pending.append(_Pending(header, request, ts_ns, end_ts_ns, error, fetch_offsets, self.request_gaps))
        ids[corr] = waiting + 1
        if len(pending) > MAX_PENDING:
            self.stats[PENDING_OVERFLOW] += 1
            self._emit_unanswered(self._pop_oldest(), LOST)
        if self._early:
            for i, (early_corr, frame) in enumerate(self._early):
                if early_corr == corr:
                    del self._early[i]
                    self._on_response(frame)
                    break

    def _pop_oldest(self) -> _Pending:
        entry = self.pending.popleft()
        ids = self.pending_ids
        corr = entry.header.correlation_id
        if ids[corr] > 1:
            ids[corr] -= 1
        else:
            del ids[corr]
            self.ambiguous_ids.discard(corr)
        return entry

    def first_pending(self, correlation_id: int) -> _Pending | None:
        """The oldest pending request with this id: the one its next response answers."""
        if correlation_id in self.pending_ids:
            for entry in self.pending:
                if entry.header.correlation_id == correlation_id:
                    return entry
        return None

    def _match(self, correlation_id: int) -> _Pending | None:
        """The oldest pending request with this id; earlier ones lost their responses (Kafka answers in order)."""
        if correlation_id not in self.pending_ids:
            self.stats[UNMATCHED_RESPONSES] += 1
            return None
        ambiguous = correlation_id in self.ambiguous_ids
        while True:
            entry = self._pop_oldest()
            if entry.header.correlation_id == correlation_id:
                break
            self.stats[LOST_RESPONSES] += 1
            self._emit_unanswered(entry, LOST)
        if ambiguous:  # this response may answer a later request with the same id: pair none of them
            self.stats[AMBIGUOUS_RESPONSES] += 1
            self._emit_unanswered(entry, LOST)
            return None
        return entry

    def _on_response(self, frame: Frame) -> None:
        stats = self.stats
        payload = frame.payload
        if not payload and frame.skips:  # a raw SASL token (after SaslHandshake v0), never copied
            stats[SASL_TOKENS] += 1
            return
        if len(payload) < 4:
            stats[MALFORMED_RESPONSE_HEADERS] += 1
            return
        corr = read_response_correlation_id(payload)
        if corr not in self.pending_ids:
            early = self._early
            early.append((corr, frame))
            if len(early) > MAX_EARLY:
                early.popleft()
                stats[UNMATCHED_RESPONSES] += 1
            return
        entry = self._match(corr)
        if entry is None:  # ambiguous: see _match
            return
        h = entry.header
        response = error = None
        if self.heads_only and frame.skips:  # the body stayed in the kernel
            stats[HEADS_ONLY_RESPONSES] += 1
            error = HEADS_ONLY
        else:
            response, error = self._decode_response(h, payload, frame.skips)
        fetch_offsets = entry.fetch_offsets
        if fetch_offsets is not None and response is not None:
            self.fetch_session.on_response(entry.request, response)
        self._pair(h, entry.ts_ns, request=entry.request, response=response, response_ts_ns=frame.last_ts_ns,
                   request_error=entry.error, response_error=error, fetch_offsets=fetch_offsets,
                   request_end_ts_ns=entry.end_ts_ns, response_start_ts_ns=frame.first_ts_ns)

    def _decode_response(self, h: RequestHeader, payload, skips) -> tuple:
        """(response, None) or (None, why it is not decoded)."""
        response = error = None
        try:
            header_version = response_header_version(h.api_key, h.api_version)
            pos = response_body_position(payload, 1) if header_version else 4
            response = decode_response_body(h.api_key, h.api_version, payload, pos, skips)
        except UnsupportedApi:
            error = UNSUPPORTED
        except DecodeError:
            self.stats[malformed_response_api(h.api_key)] += 1
            error = MALFORMED
        return response, error

    def _on_response_lost(self, lost: FrameLost) -> None:
        self.stats[TRUNCATED_RESPONSES] += 1
        if len(lost.head) < 4:
            return
        entry = self._match(struct.unpack_from(">i", lost.head)[0])
        if entry is None:
            return
        h = entry.header
        self._pair(h, entry.ts_ns, request=entry.request, response_ts_ns=lost.last_ts_ns, request_error=entry.error,
                   response_error=TRUNCATED, request_end_ts_ns=entry.end_ts_ns, response_start_ts_ns=lost.first_ts_ns)

    def _emit_unanswered(self, entry: _Pending, reason: str) -> None:
        h = entry.header
        self._pair(h, entry.ts_ns, request=entry.request, request_error=entry.error, response_error=reason,
                   request_end_ts_ns=entry.end_ts_ns)

    def _pair(self, h: RequestHeader, request_ts_ns: int, *, request=None, response=None,
              response_ts_ns: int | None = None, request_error: str | None = None, response_error: str | None = None,
              fetch_offsets: dict | None = None, request_end_ts_ns: int | None = None,
              response_start_ts_ns: int | None = None) -> None:
        """The one place a KafkaPair is made: the request's header and what is known of either side."""
        self._events.append(_new(KafkaPair, (self.conn_id, h.api_key, h.api_version, h.correlation_id, h.client_id,
                                             request, response, request_ts_ns, response_ts_ns, request_error,
                                             response_error, fetch_offsets, request_end_ts_ns,
                                             response_start_ts_ns)))


class KafkaStreamDecoder:
    """All connections of a capture: stream events in, `KafkaPair` events out.

    Each call hands back the pairs its event completed, so there is nothing to pull. Data or a gap of a
    connection whose open event was not seen starts it as a client connection; a second open event for
    an id ends the old connection first (its requests `LOST`). Like `KafkaConnection`, it never raises for
    what the events hold; all connections count in the one `stats`. `opened` (conn id -> its open event,
    filled here as they come) is the table to keep them in, shared with whoever reads it (the correlator);
    a new one when None.
    """

    def __init__(self, opened: dict[int, ConnectionOpened] | None = None) -> None:
        self.connections: dict[int, KafkaConnection] = {}
        self.opened: dict[int, ConnectionOpened] = {} if opened is None else opened
        self.stats: Counter = Counter()

    def feed(self, event: StreamEvent) -> list[KafkaPair]:
        """One stream event in; the pairs it completed out (often none). Annotations are not the
        decoder's: they give nothing."""
        kind = type(event)
        if kind is StreamData:
            conn = self.connections.get(event.conn_id) or self._conn(event.conn_id)
            conn.feed_data(event.direction, event.offset, event.data, event.ts_ns, event.frame_start,
                           event.last_ts_ns, event.skips, event.skip_reason)
        elif kind is StreamGap:
            conn = self._conn(event.conn_id)
            conn.feed_gap(event.direction, event.offset, event.length, event.ts_ns, event.reason)
        elif kind is ConnectionOpened:
            self.opened[event.conn_id] = event
            old = self.connections.pop(event.conn_id, None)
            out = self._drain(old, event.ts_ns) if old is not None else []
            self.connections[event.conn_id] = KafkaConnection(
                event.conn_id, Role.SERVER if event.role == Role.SERVER else Role.CLIENT, self.stats)
            return out
        elif kind is ConnectionClosed:
            conn = self.connections.pop(event.conn_id, None)
            return self._drain(conn, event.ts_ns) if conn is not None else []
        else:
            return []
        events = []
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
        return events

    def summary(self) -> Counter:
        """All counters: those of closed connections plus the splitters of open ones."""
        total = Counter(self.stats)
        for conn in self.connections.values():
            total.update(conn.splitter_counters())
        return total

    def feed_all(self, events: Iterable[StreamEvent]) -> Iterator[KafkaPair]:
        """`feed` of each event, the pairs in order (without `finish`)."""
        for event in events:
            yield from self.feed(event)

    def finish(self, ts_ns: int = 0) -> list[KafkaPair]:
        """End of input: requests still waiting are reported without responses."""
        out = []
        for conn_id in list(self.connections):
            out.extend(self._drain(self.connections.pop(conn_id), ts_ns, IN_FLIGHT))
        return out

    def _conn(self, conn_id: int) -> KafkaConnection:
        conn = self.connections.get(conn_id)
        if conn is None:
            conn = self.connections[conn_id] = KafkaConnection(conn_id, Role.CLIENT, self.stats)
        return conn

    @staticmethod
    def _drain(conn: KafkaConnection, ts_ns: int, unanswered: str = LOST) -> list[KafkaPair]:
        conn.close(ts_ns, unanswered)
        events = []
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
        return events
