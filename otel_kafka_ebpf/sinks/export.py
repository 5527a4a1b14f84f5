"""Sending encoded OTLP requests: transports (gRPC, HTTP, file, console) behind one bounded queue.

The capture never waits for the backend. Requests queue per signal up to a bound; when the backend
is down or slow the oldest requests are dropped and counted, one warning line per minute says so,
and the queue drains when the backend is back. Retryable failures (UNAVAILABLE, 429, 503, ...) are
retried with backoff; others (a bad request, no permission) drop the request with a warning.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from typing import TextIO
from urllib.parse import urlsplit

from google.protobuf import json_format

from ..config import ExporterConfig

SIGNALS = ("traces", "metrics", "logs")
_GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
_HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}
WARN_EVERY_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0


def _messages():
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace

    return {
        "traces": (trace.ExportTraceServiceRequest, trace.ExportTraceServiceResponse, "rejected_spans"),
        "metrics": (metrics.ExportMetricsServiceRequest, metrics.ExportMetricsServiceResponse,
                    "rejected_data_points"),
        "logs": (logs.ExportLogsServiceRequest, logs.ExportLogsServiceResponse, "rejected_log_records"),
    }


class ExportError(Exception):
    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def tls_context(cfg: ExporterConfig) -> ssl.SSLContext:
    """A TLS context that trusts `certificate` (default: the system's) and presents the mTLS pair if any;
    a file that is not what it should be is a ValueError naming it (gRPC itself would only log and retry)."""
    try:
        context = ssl.create_default_context(cafile=cfg.certificate)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{cfg.certificate}: not a PEM CA certificate ({getattr(exc, 'reason', None) or exc})") from None
    if cfg.client_certificate:
        try:
            context.load_cert_chain(cfg.client_certificate, cfg.client_key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{cfg.client_certificate}, {cfg.client_key}: not a PEM certificate and its key "
                             f"({getattr(exc, 'reason', None) or exc})") from None
    return context


class GrpcTransport:
    """OTLP/gRPC. An endpoint without scheme, or with http://, is plain text unless `insecure` is false."""

    def __init__(self, cfg: ExporterConfig) -> None:
        import grpc

        self._grpc = grpc
        endpoint = cfg.endpoint or "localhost:4317"
        parts = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
        target = parts.netloc or endpoint
        if parts.port is None:
            target = f"{target}:4317"
        secure = parts.scheme == "https" or (cfg.insecure is False and parts.scheme != "http")
        self.target = target
        options = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.min_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", 5000), ("grpc.max_send_message_length", 64 << 20)]
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else None
        if secure:
            tls_context(cfg)  # the files are checked here, once, with a clear error
            creds = grpc.ssl_channel_credentials(_read(cfg.certificate), _read(cfg.client_key),
                                                 _read(cfg.client_certificate))
            self.channel = grpc.secure_channel(target, creds, options=options, compression=compression)
        else:
            self.channel = grpc.insecure_channel(target, options=options, compression=compression)
        self.metadata = tuple((k.lower(), v) for k, v in cfg.headers.items())
        messages = _messages()
        self._methods = {
            signal: (self.channel.unary_unary(path, request_serializer=None,
                                              response_deserializer=messages[signal][1].FromString),
                     messages[signal][2])
            for signal, path in _GRPC_METHODS.items()
        }

    def describe(self) -> str:
        return self.target

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        grpc = self._grpc
        method, rejected_field = self._methods[signal]
        try:
            response = method(payload, timeout=timeout, metadata=self.metadata or None)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                                 grpc.StatusCode.CANCELLED, grpc.StatusCode.OUT_OF_RANGE,
                                 grpc.StatusCode.DATA_LOSS)
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise ExportError(f"{code.name if code else 'error'}: {details}", retryable) from None
        return getattr(response.partial_success, rejected_field, 0) if response.HasField("partial_success") else 0

    def close(self) -> None:
        self.channel.close()


class HttpTransport:
    """OTLP/HTTP with protobuf bodies: `endpoint` + /v1/<signal>, or the signal's own full URL."""

    def __init__(self, cfg: ExporterConfig) -> None:
        base = (cfg.endpoint or "http://localhost:4318").rstrip("/")
        if "://" not in base:
            base = "http://" + base
        own = {"traces": cfg.traces_endpoint, "metrics": cfg.metrics_endpoint, "logs": cfg.logs_endpoint}
        self.urls = {s: (own[s] if own[s] and "://" in own[s] else (f"http://{own[s]}" if own[s] else
                                                                     base + _HTTP_PATHS[s])) for s in SIGNALS}
        self.headers = {"Content-Type": "application/x-protobuf", "User-Agent": "otel-kafka-ebpf"}
        self.headers.update(cfg.headers)
        self.gzip = cfg.compression == "gzip"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.context = None
        if any(u.startswith("https://") for u in self.urls.values()):
            self.context = tls_context(cfg)
        self._messages = _messages()

    def describe(self) -> str:
        return self.urls["traces"].rsplit("/v1/", 1)[0]

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        body = gzip.compress(payload, 5) if self.gzip else payload
        req = urllib.request.Request(self.urls[signal], data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            retryable = exc.code in (408, 429, 502, 503, 504)
            raise ExportError(f"HTTP {exc.code} {exc.reason}", retryable) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExportError(f"{reason}", True) from None
        _, response_type, rejected_field = self._messages[signal]
        try:
            response = response_type.FromString(data)
        except Exception:  # a body that is not the protobuf response: the export itself succeeded
            return 0
        return getattr(response.partial_success, rejected_field, 0) if response.HasField("partial_success") else 0

    def close(self) -> None:
        pass


def otlp_json(signal: str, payload: bytes) -> dict:
    """An encoded request as OTLP/JSON: camelCase names, enums as numbers, trace and span ids in hex."""
    request_type = _messages()[signal][0]
    obj = json_format.MessageToDict(request_type.FromString(payload), use_integers_for_enums=True)
    _hex_ids(obj)
    return obj


_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def _hex_ids(node) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


class FileTransport:
    """OTLP/JSON, one export request per line (the Collector's file exporter format), to a file or stdout."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.out: TextIO = os.fdopen(fd, "a", encoding="utf-8")
        else:
            self.out = sys.stdout
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.path or "standard output"

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        line = json.dumps(otlp_json(signal, payload), separators=(",", ":"))
        with self._lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except OSError as exc:
                raise ExportError(f"{self.describe()}: {exc.strerror}", False) from None
        return 0

    def close(self) -> None:
        if self.path:
            self.out.close()


class ConsoleTransport:
    """One readable line per span, metric point or log record, on standard output."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def describe(self) -> str:
        return "console"

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        from .console import describe_request

        for line in describe_request(signal, otlp_json(signal, payload)):
            self.out.write(line + "\n")
        self.out.flush()
        return 0

    def close(self) -> None:
        pass


class NullTransport:
    def describe(self) -> str:
        return "nowhere"

    def send(self, signal: str, payload: bytes, timeout: float) -> int:
        return 0

    def close(self) -> None:
        pass


def make_transport(cfg: ExporterConfig):
    if cfg.type == "otlp":
        return GrpcTransport(cfg)
    if cfg.type == "otlp-http":
        return HttpTransport(cfg)
    if cfg.type == "file":
        return FileTransport(cfg.file_path)
    if cfg.type == "console":
        return ConsoleTransport()
    return NullTransport()


class Exporter:
    """A sender thread behind bounded per-signal queues. `submit` never blocks."""

    def __init__(self, transport, *, max_items: dict[str, int] | None = None, timeout_s: float = 10.0,
                 warn: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.max_items = {"traces": 65536, "metrics": 1 << 20, "logs": 65536}
        self.max_items.update(max_items or {})
        self.warn = warn or (lambda msg: print(f"otel-kafka-ebpf: {msg}", file=sys.stderr, flush=True))
        self.clock = clock
        self.queues: dict[str, deque[tuple[bytes, int]]] = {s: deque() for s in SIGNALS}
        self.queued = Counter()  # items waiting, per signal
        self.exported = Counter()  # items the backend accepted
        self.dropped = Counter()  # items dropped: queue full, refused, or left at shutdown
        self.rejected = Counter()  # items the backend reported rejected (partial success)
        self.requests = Counter()  # export requests: ok / failed
        self._cond = threading.Condition()
        self._closing = False
        self._failing_since: float | None = None
        self._last_warn = -1e18
        self._dropped_at_warn = 0
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    # --- producer side (pipeline thread) --------------------------------------------------------

    def submit(self, signal: str, payload: bytes, items: int) -> bool:
        with self._cond:
            if self._closing:
                self.dropped[signal] += items
                return False
            queue = self.queues[signal]
            limit = self.max_items[signal]
            while queue and self.queued[signal] + items > limit:
                _, n = queue.popleft()  # the oldest go first: what is fresh matters most
                self.queued[signal] -= n
                self.dropped[signal] += n
            if items > limit:
                self.dropped[signal] += items
                return False
            queue.append((payload, items))
            self.queued[signal] += items
            self._cond.notify()
        return True

    @property
    def healthy(self) -> bool:
        return self._failing_since is None

    # --- sender thread ----------------------------------------------------------------------------

    def _next(self) -> tuple[str, bytes, int] | None:
        for signal in SIGNALS:
            if self.queues[signal]:
                payload, n = self.queues[signal][0]
                return signal, payload, n
        return None

    def _run(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            with self._cond:
                while not self._closing and self._next() is None:
                    self._cond.wait(1.0)
                item = self._next()
                if item is None:
                    return  # closing and drained
            signal, payload, n = item
            try:
                rejected = self.transport.send(signal, payload, self.timeout_s)
            except ExportError as exc:
                self.requests["failed"] += 1
                self._last_error = str(exc)
                if exc.retryable:
                    self._failing(f"cannot export to {self.transport.describe()} ({exc}); retrying")
                    with self._cond:
                        if self._closing:
                            return
                        self._cond.wait(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
                    continue
                self._pop(signal, dropped=True)
                self._failing(f"{self.transport.describe()} refused an export ({exc}); dropped")
                continue
            except Exception as exc:  # a transport bug must not end the agent: count and go on
                self.requests["failed"] += 1
                self._pop(signal, dropped=True)
                self._failing(f"export failed ({type(exc).__name__}: {exc}); dropped")
                continue
            backoff = RETRY_MIN_S
            self.requests["ok"] += 1
            self._pop(signal, dropped=False, rejected=rejected)
            if self._failing_since is not None:
                down = self.clock() - self._failing_since
                self._failing_since = None
                self.warn(f"exporting to {self.transport.describe()} again after {down:.0f} s; "
                          f"{sum(self.dropped.values())} items dropped so far")

    def _pop(self, signal: str, dropped: bool, rejected: int = 0) -> None:
        with self._cond:
            queue = self.queues[signal]
            if not queue:
                return
            _, n = queue.popleft()
            self.queued[signal] -= n
            if dropped:
                self.dropped[signal] += n
            else:
                self.exported[signal] += n - rejected
                self.rejected[signal] += rejected

    def _failing(self, message: str) -> None:
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_warn >= WARN_EVERY_S:
            dropped = sum(self.dropped.values())
            queued = sum(self.queued.values())
            self.warn(f"{message}; {dropped - self._dropped_at_warn} items dropped since the last warning, "
                      f"{queued} queued")
            self._last_warn = now
            self._dropped_at_warn = dropped

    # --- end ----------------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for at most `timeout_s`; what is left is counted as dropped."""
        deadline = self.clock() + timeout_s
        with self._cond:
            self._cond.notify()
        while self.clock() < deadline and any(self.queues.values()) and self._failing_since is None:
            time.sleep(0.02)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - self.clock()) + self.timeout_s)
        with self._cond:
            for signal, queue in self.queues.items():
                while queue:
                    _, n = queue.popleft()
                    self.dropped[signal] += n
                    self.queued[signal] -= n
        try:
            self.transport.close()
        except Exception:
            pass
