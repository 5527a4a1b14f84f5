"""The agent asks a broker for Metadata itself, when a connection's cluster or topic names are unknown.

An agent that starts after its clients sees no Metadata exchange until the clients refresh it
(every 5 minutes by default), so it would not know which cluster, or which topic names, their
Produce and Fetch traffic belongs to. On a setting (on by default) it opens one plain TCP
connection of its own to such a broker endpoint, in the client's network namespace, asks
ApiVersions and Metadata (all topics, never creating any), and hands the raw response to the
pipeline. A listener that wants TLS or SASL does not answer; that endpoint is tried again later,
never more than once per `retry_s`. Nothing of a client's traffic is sent anywhere.
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

from .correlate.clusters import Endpoint
from .kafka.api_versions import decode_response as decode_api_versions
from .kafka.primitives import DecodeError
from .kafka.requests import METADATA_VERSIONS, api_versions_request, metadata_request
from .kafka.versions import METADATA

CLIENT_ID = "otel-kafka-ebpf-lookup"
MAX_RESPONSE = 64 << 20
CLONE_NEWNET = 0x40000000


class LookupFailed(Exception):
    pass


def _recv_frame(sock: socket.socket, correlation_id: int) -> bytes:
    head = _recv_exact(sock, 8)
    size, corr = struct.unpack(">ii", head)
    if corr != correlation_id or not 4 <= size <= MAX_RESPONSE:
        raise LookupFailed("not a Kafka response")
    return _recv_exact(sock, size - 4)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise LookupFailed("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def fetch_metadata(addr: str, port: int, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """(Metadata version, response body after its header) from the broker at addr:port."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((addr, port))
        sock.sendall(api_versions_request(1, CLIENT_ID))
        body = _recv_frame(sock, 1)  # ApiVersions responses keep header v0: the body follows
        try:
            versions = decode_api_versions(memoryview(body), 0, 0)
        except (DecodeError, IndexError, struct.error):
            raise LookupFailed("ApiVersions answer not understood") from None
        ranges = {r.api_key: (r.min_version, r.max_version) for r in versions.api_keys}
        if METADATA not in ranges:
            raise LookupFailed("the broker offers no Metadata")
        lo, hi = ranges[METADATA]
        version = min(hi, METADATA_VERSIONS[1])
        if version < max(lo, METADATA_VERSIONS[0]):
            raise LookupFailed(f"no common Metadata version (broker v{lo}-v{hi})")
        sock.sendall(metadata_request(version, 2, CLIENT_ID))
        body = _recv_frame(sock, 2)
        if version >= 9:  # flexible response header: tagged fields after the correlation id
            n_tags = body[0]
            if n_tags != 0:
                raise LookupFailed("unexpected tagged fields in the response header")
            body = body[1:]
        return version, body


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class MetadataLookup:
    """Background lookups; `request` and `results` are called from the pipeline's thread."""

    def __init__(self, *, timeout_s: float = 2.0, retry_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.stats: Counter = Counter()
        self._todo: queue.Queue = queue.Queue()
        self._done: deque = deque()
        self._last_try: dict[Endpoint, float] = {}
        self._pids: dict[int, int] = {}  # netns -> a pid living in it (to enter it)
        try:
            self._own_netns = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            self._own_netns = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="metadata-lookup", daemon=True)
        self._thread.start()

    def note_process(self, netns: int, pid: int) -> None:
        self._pids[netns] = pid

    def request(self, endpoint: Endpoint) -> None:
        now = time.monotonic()
        last = self._last_try.get(endpoint)
        if last is not None and now - last < self.retry_s:
            return
        self._last_try[endpoint] = now
        self.stats["requested"] += 1
        self._todo.put(endpoint)

    def results(self) -> list[tuple[Endpoint, int, bytes]]:
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        self._closed = True
        self._todo.put(None)

    def _run(self) -> None:
        while not self._closed:
            endpoint = self._todo.get()
            if endpoint is None:
                return
            try:
                if endpoint.netns in (0, self._own_netns):
                    version, body = fetch_metadata(endpoint.addr, endpoint.port, self.timeout_s)
                else:
                    version, body = self._in_netns(endpoint)
            except (OSError, LookupFailed, struct.error, IndexError) as exc:
                self.stats["failed"] += 1
                self.stats[f"failed: {type(exc).__name__}"] += 1
                continue
            self.stats["answered"] += 1
            self._done.append((endpoint, version, body))

    def _in_netns(self, endpoint: Endpoint) -> tuple[int, bytes]:
        """Enter the client's network namespace in a thread of its own (setns changes only the caller)."""
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
                result.append(fetch_metadata(endpoint.addr, endpoint.port, self.timeout_s))
            except (OSError, LookupFailed, struct.error, IndexError) as exc:
                result.append(exc)

        t = threading.Thread(target=worker, name="metadata-lookup-netns", daemon=True)
        t.start()
        t.join(self.timeout_s * 3)
        if not result:
            raise LookupFailed("timed out")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]
