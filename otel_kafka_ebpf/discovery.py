"""The agent asks brokers itself, for what its clients' traffic does not tell (an option, on by default).

- Metadata: an agent that starts after its clients sees no Metadata exchange until they refresh it
  (every 5 minutes by default), so it would not know which cluster, or which topic names, their
  Produce and Fetch traffic belongs to. It asks such a broker endpoint for Metadata (all topics,
  never creating any), at most once per `retry_s` per endpoint.
- High watermarks: a stopped consumer no longer fetches, so its own traffic no longer says how far
  the partition has grown; where the agent does not see the producers either, it asks the partition's
  leader (the broker the consumer fetched from) for the latest offset with ListOffsets, as a consumer
  would, at most once per second per broker.

One plain TCP connection per broker endpoint, opened in the client's network namespace and kept
while it works; ApiVersions first. A listener that wants TLS or SASL does not answer; that endpoint is
tried again later. Raw response bodies are handed to the pipeline, which decodes and records them.
Nothing of a client's traffic is sent anywhere.
"""

from __future__ import annotations

import ctypes
import os
import queue
import socket
import struct
import threading
import time
from collections import Counter, deque
from typing import NamedTuple

from .correlate.clusters import Endpoint
from .kafka.api_versions import decode_response as decode_api_versions
from .kafka.primitives import DecodeError
from .kafka.requests import (
    LIST_OFFSETS_VERSION, METADATA_VERSIONS, api_versions_request, list_offsets_request, metadata_request,
)
from .kafka.versions import LIST_OFFSETS, METADATA

CLIENT_ID = "otel-kafka-ebpf-lookup"
MAX_RESPONSE = 64 << 20
CLONE_NEWNET = 0x40000000
IDLE_CLOSE_S = 30.0  # a connection not used for this long is closed

# kinds of answers
METADATA_ANSWER = "metadata"
OFFSETS_ANSWER = "offsets"


class Answer(NamedTuple):
    kind: str  # METADATA_ANSWER or OFFSETS_ANSWER
    endpoint: Endpoint
    version: int
    body: bytes  # the response body after its header


class LookupFailed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise LookupFailed("connection closed by the broker")
        buf += chunk
    return bytes(buf)


class BrokerConnection:
    """One endpoint: request frames out, response bodies in, one at a time."""

    def __init__(self, addr: str, port: int, timeout_s: float) -> None:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect((addr, port))
        except OSError:
            self.sock.close()
            raise
        self.correlation_id = 0
        self.used = time.monotonic()
        body = self.call(lambda corr: api_versions_request(corr, CLIENT_ID), flexible_header=False)
        try:
            versions = decode_api_versions(memoryview(body), 0, 0)
        except (DecodeError, IndexError, struct.error):
            self.close()
            raise LookupFailed("ApiVersions answer not understood") from None
        self.ranges = {r.api_key: (r.min_version, r.max_version) for r in versions.api_keys}

    def call(self, frame_of, flexible_header: bool) -> bytes:
        self.correlation_id += 1
        corr = self.correlation_id
        self.sock.sendall(frame_of(corr))
        size, got = struct.unpack(">ii", _recv_exact(self.sock, 8))
        if got != corr or not 4 <= size <= MAX_RESPONSE:
            raise LookupFailed("not a Kafka response")
        body = _recv_exact(self.sock, size - 4)
        self.used = time.monotonic()
        if flexible_header:  # tagged fields after the correlation id
            if body[:1] != b"\x00":
                raise LookupFailed("unexpected tagged fields in the response header")
            body = body[1:]
        return body

    def metadata(self) -> tuple[int, bytes]:
        lo, hi = self.ranges.get(METADATA, (0, -1))
        version = min(hi, METADATA_VERSIONS[1])
        if version < max(lo, METADATA_VERSIONS[0]):
            raise LookupFailed(f"no common Metadata version (broker v{lo}-v{hi})")
        return version, self.call(lambda corr: metadata_request(version, corr, CLIENT_ID), version >= 9)

    def latest_offsets(self, topics: dict[str, list[int]]) -> tuple[int, bytes]:
        lo, hi = self.ranges.get(LIST_OFFSETS, (0, -1))
        if not lo <= LIST_OFFSETS_VERSION <= hi:
            raise LookupFailed(f"ListOffsets v{LIST_OFFSETS_VERSION} not offered (broker v{lo}-v{hi})")
        return LIST_OFFSETS_VERSION, self.call(lambda corr: list_offsets_request(corr, CLIENT_ID, topics), False)

    def close(self) -> None:
        self.sock.close()


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _why(exc: BaseException) -> str:
    if isinstance(exc, LookupFailed):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"an answer that does not decode ({type(exc).__name__})"


class BrokerLookup:
    """Background lookups; `request_*`, `note_process` and `results` are called from the pipeline's thread."""

    def __init__(self, *, timeout_s: float = 2.0, retry_s: float = 30.0, offsets_every_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.offsets_every_s = offsets_every_s
        self.stats: Counter = Counter()
        self.last_failure: str | None = None  # the endpoint and reason of the latest failed lookup
        self._todo: queue.Queue = queue.Queue()
        self._done: deque[Answer] = deque()
        self._last_try: dict[tuple[str, Endpoint], float] = {}
        self._pids: dict[int, int] = {}  # netns -> a pid living in it (to enter it)
        self._conns: dict[Endpoint, BrokerConnection] = {}  # the worker thread's own
        try:
            self._own_netns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            self._own_netns = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="broker-lookup", daemon=True)
        self._thread.start()

    def note_process(self, netns: int, pid: int) -> None:
        self._pids[netns] = pid

    def _due(self, kind: str, endpoint: Endpoint, every_s: float) -> bool:
        now = time.monotonic()
        last = self._last_try.get((kind, endpoint))
        if last is not None and now - last < every_s:
            return False
        self._last_try[(kind, endpoint)] = now
        return True

    def request(self, endpoint: Endpoint) -> None:
        """Metadata of the cluster behind `endpoint`."""
        if self._due(METADATA_ANSWER, endpoint, self.retry_s):
            self.stats["metadata_requested"] += 1
            self._todo.put((METADATA_ANSWER, endpoint, None))

    def request_offsets(self, endpoint: Endpoint, topics: dict[str, list[int]]) -> None:
        """The high watermarks of these partitions, from their leader at `endpoint`."""
        if self._due(OFFSETS_ANSWER, endpoint, self.offsets_every_s):
            self.stats["offsets_requested"] += 1
            self._todo.put((OFFSETS_ANSWER, endpoint, topics))

    def results(self) -> list[Answer]:
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        self._closed = True
        self._todo.put(None)

    def _run(self) -> None:
        while not self._closed:
            try:
                job = self._todo.get(timeout=IDLE_CLOSE_S)
            except queue.Empty:
                self._close_idle()
                continue
            if job is None:
                break
            kind, endpoint, topics = job
            try:
                version, body = self._ask(kind, endpoint, topics)
            except Exception as exc:  # noqa: BLE001 - whatever a broker (or not one) answers: counted, never raised
                self.stats[f"{kind}_failed"] += 1
                self.stats[f"failed: {type(exc).__name__}"] += 1
                self.last_failure = f"{endpoint.addr}:{endpoint.port}: {_why(exc)}"
                conn = self._conns.pop(endpoint, None)
                if conn is not None:
                    conn.close()
                continue
            self.stats[f"{kind}_answered"] += 1
            self._done.append(Answer(kind, endpoint, version, body))
            self._close_idle()
        for conn in self._conns.values():
            conn.close()

    def _ask(self, kind: str, endpoint: Endpoint, topics) -> tuple[int, bytes]:
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = self._conns[endpoint] = self._connect(endpoint)
        return conn.metadata() if kind == METADATA_ANSWER else conn.latest_offsets(topics)

    def _close_idle(self) -> None:
        now = time.monotonic()
        for endpoint, conn in list(self._conns.items()):
            if now - conn.used > IDLE_CLOSE_S:
                conn.close()
                del self._conns[endpoint]

    def _connect(self, endpoint: Endpoint) -> BrokerConnection:
        if endpoint.netns in (0, self._own_netns):
            return BrokerConnection(endpoint.addr, endpoint.port, self.timeout_s)
        # Another network namespace: its socket is made in a thread that entered it (setns changes only the
        # calling thread); the socket stays in that namespace, usable from this thread.
        pid = self._pids.get(endpoint.netns)
        if pid is None:
            raise LookupFailed("no process known in that network namespace")
        result: list = []

        def worker() -> None:
            try:
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                result.append(BrokerConnection(endpoint.addr, endpoint.port, self.timeout_s))
            except (OSError, LookupFailed, struct.error, IndexError) as exc:
                result.append(exc)

        t = threading.Thread(target=worker, name="broker-lookup-netns", daemon=True)
        t.start()
        t.join(self.timeout_s * 3)
        if not result:
            raise LookupFailed("timed out")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]
