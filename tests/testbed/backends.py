"""Real OpenTelemetry backends for tests and demos: a Collector, Jaeger and Prometheus on 127.0.0.1.

Binaries (built or installed once by `make backends`, or on first use):

- ``otelcol-oke``: our own Collector build (``tests/testbed/otelcol/``: OTLP receiver, batch and
  memory_limiter, otlp_grpc/otlp_http/debug/file/prometheus exporters, span_metrics connector,
  health_check), in ``$OKE_CACHE/bin/otelcol-oke-<source hash>``;
- ``jaeger``: Jaeger v2 (``cmd/jaeger``, pinned in ``tests/testbed/jaeger/go.mod``), memory storage,
  in ``$OKE_CACHE/bin/jaeger-<source hash>``;
- ``prometheus``: the Debian package.

Every process gets free ports, a work directory (its config and its log) and is stopped when the
test process exits, however it exits. Temporary work directories are removed at close() unless
OKE_KEEP_BACKEND_DIRS=1 (then look for /tmp/oke-backends-*, /tmp/oke-otelcol-*, ...).

    with OtelBackends("agent-gateway.yaml") as ob:     # Jaeger, a Collector, Prometheus
        run_agent(env=ob.agent_env())                  # OTEL_EXPORTER_OTLP_ENDPOINT=...
        trace = ob.jaeger.trace(trace_id)              # plain dicts
        ob.prometheus.query('sum(kafka_messages_total)')   # [(labels, value), ...]
        with ob.collector_down():                      # the agent's Collector gone for a while
            ...

Command line (from the repository root; `make backends-up` / `backends-down` / `backends-status`):

    python -m tests.testbed.backends build
    python -m tests.testbed.backends up [--otlp-grpc-port 4317] [--jaeger-port 16686] ...
    python -m tests.testbed.backends status|down [--otlp-grpc-port 4317]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from tests.testbed.kafka import _die_with_parent_fn, cache_dir, free_port, tail_file, terminate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OTELCOL_SRC = HERE / "otelcol"
JAEGER_SRC = HERE / "jaeger"
COLLECTOR_CONFIG_DIR = ROOT / "collector-config"
JAEGER_MAIN = "github.com/jaegertracing/jaeger/cmd/jaeger"
# Bump when the build command changes, so cached binaries are rebuilt.
_BUILD_RECIPE = "1"
# The Collector logs this once every component has started (receivers last).
_COLLECTOR_READY = "Everything is ready. Begin running and processing data."

T = TypeVar("T")


class BackendError(RuntimeError):
    """A backend could not be built, started or queried."""


# --------------------------------------------------------------------------- binaries

def bin_dir() -> Path:
    return cache_dir() / "bin"


def go_command() -> str:
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise BackendError("Go is needed to build the Collector and Jaeger (/usr/local/go/bin/go)")
    return go


def _source_hash(src: Path) -> str:
    h = hashlib.sha256(_BUILD_RECIPE.encode())
    for path in sorted(p for p in src.iterdir() if p.name in ("go.mod", "go.sum") or p.suffix == ".go"):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _module_version(src: Path, module: str) -> str:
    m = re.search(rf"^\s*{re.escape(module)} (v\S+)", (src / "go.mod").read_text(), re.M)
    if not m:
        raise BackendError(f"{module} is not required in {src / 'go.mod'}")
    return m.group(1)


def _go_build(name: str, src: Path, package: str, ldflags: str, quiet: bool) -> Path:
    """Build `package` from the module in `src` once per source hash; return the binary."""
    digest = _source_hash(src)
    out = bin_dir() / f"{name}-{digest}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same binary
        if out.is_file():
            return out
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        cmd = [go_command(), "build", "-mod=readonly", "-trimpath", "-buildvcs=false",
               "-ldflags", f"-s -w {ldflags}", "-o", str(tmp), package]
        env = {**os.environ, "CGO_ENABLED": "0"}
        if not quiet:
            print(f"building {name} ({src.relative_to(ROOT)}) -> {out}", file=sys.stderr)
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise BackendError(f"building {name} failed (exit {res.returncode}):\n{res.stdout[-4000:]}")
        os.replace(tmp, out)
        if not quiet:
            print(f"built {name} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return out


def ensure_otelcol(quiet: bool = True) -> Path:
    """Our Collector build (tests/testbed/otelcol), cached by source hash."""
    return _go_build("otelcol-oke", OTELCOL_SRC, ".", f"-X main.version={_source_hash(OTELCOL_SRC)}",
                     quiet)


def ensure_jaeger(quiet: bool = True) -> Path:
    """Jaeger v2 (all in one) at the version tests/testbed/jaeger/go.mod pins, cached by source hash."""
    version = _module_version(JAEGER_SRC, "github.com/jaegertracing/jaeger")
    return _go_build("jaeger", JAEGER_SRC, JAEGER_MAIN,
                     f"-X github.com/jaegertracing/jaeger/internal/version.latestVersion={version}",
                     quiet)


def prometheus_binary() -> Path:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(found, os.X_OK):
        raise BackendError("prometheus is not installed (Debian: apt-get install prometheus; "
                           "or `make backends`)")
    return Path(found)


def ensure_all(quiet: bool = True) -> dict[str, Path]:
    return {"otelcol": ensure_otelcol(quiet), "jaeger": ensure_jaeger(quiet),
            "prometheus": prometheus_binary()}


def collector_config(name: str | os.PathLike) -> Path:
    """A pipeline file: a path, or a name in collector-config/ ("agent-gateway.yaml")."""
    path = Path(name)
    if not path.is_file() and (COLLECTOR_CONFIG_DIR / path).is_file():
        path = COLLECTOR_CONFIG_DIR / path
    if not path.is_file():
        raise BackendError(f"no Collector config {name} (looked in {COLLECTOR_CONFIG_DIR})")
    return path.resolve()


# --------------------------------------------------------------------------- HTTP helpers

def http_get(url: str, params: Mapping[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError):
        return 0, b""


def _get_json(url: str, params: Mapping[str, Any] | None = None) -> Any:
    status, body = http_get(url, params, timeout=10)
    if status != 200:
        raise BackendError(f"GET {url} {params or ''}: HTTP {status} {body[:500]!r}")
    return json.loads(body)


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.25,
               what: str = "condition") -> T:
    """Call probe() until it returns something truthy; return that. BackendError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise BackendError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


# --------------------------------------------------------------------------- processes

def _keep_dirs() -> bool:
    return os.environ.get("OKE_KEEP_BACKEND_DIRS", "") not in ("", "0")


_live: set["Backend"] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        live = list(_live)
    for b in live:
        with contextlib.suppress(Exception):
            b.close()


atexit.register(_stop_all_at_exit)


class Backend:
    """One backend process on 127.0.0.1: free ports, a work directory with its config and log.

    ports: addresses chosen by the caller ({port name: number}); the others are drawn free, and
    kept once the process has started, so stop() then start() comes back on the same addresses.
    workdir: kept if given; otherwise a temp dir removed by close(). daemon: the process outlives
    this Python process (the command line's `up`); otherwise it dies with it.
    """

    name = "backend"
    port_names: tuple[str, ...] = ()
    startup_timeout = 60.0

    def __init__(self, workdir: str | os.PathLike | None = None, ports: Mapping[str, int] | None = None,
                 daemon: bool = False, startup_timeout: float | None = None):
        self.keep_dir = workdir is not None or _keep_dirs()
        self.workdir: Path | None = Path(workdir).resolve() if workdir is not None else None
        self.ports: dict[str, int] = dict(ports or {})
        self._fixed = set(self.ports)
        self.daemon = daemon
        if startup_timeout is not None:
            self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log_mark = 0

    # -- for subclasses
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files into the work directory (ports are known)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- state
    @property
    def log_file(self) -> Path:
        if self.workdir is None:
            raise BackendError(f"{self.name} not started")
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self, lines: int = 60) -> str:
        """The last lines of the process's log (for assertion messages)."""
        return f"--- {self.log_file} (tail) ---\n{tail_file(self.log_file, lines)}"

    def _log_since_start(self) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_mark)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- lifecycle
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self):
        """Start (or restart on the same ports) and wait until ready."""
        if self.running:
            return self
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"oke-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if set(self.port_names) <= self._fixed else 3
        for attempt in range(attempts):
            for port_name in self.port_names:
                self.ports.setdefault(port_name, free_port())
            self._prepare()
            self._spawn()
            try:
                self._wait_ready()
            except BackendError:
                clash = "address already in use" in self._log_since_start().lower()
                self._kill(grace=5)
                if clash and attempt < attempts - 1:  # a drawn port was taken meanwhile
                    self.ports = {k: v for k, v in self.ports.items() if k in self._fixed}
                    continue
                raise
            self._fixed.update(self.ports)
            return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        with open(self.log_file, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self._command())}\n"
                      .encode())
            log.flush()
            self._log_mark = log.tell()
            self.proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self._env(), start_new_session=self.daemon,
                preexec_fn=None if self.daemon else _die_with_parent_fn())
        if not self.daemon:
            with _live_lock:
                _live.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendError(f"{self.name} exited with code {self.proc.returncode} during "
                                   f"startup\n{self.logs()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise BackendError(f"{self.name} not ready after {self.startup_timeout:.0f} s "
                           f"(ports {self.ports})\n{self.logs()}")

    def _kill(self, grace: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        terminate(proc.pid, grace, proc)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a clean shutdown: queues flushed), SIGKILL after `grace` s. Ports and work
        directory are kept: start() brings it back on the same addresses."""
        self._kill(grace)

    def kill(self) -> None:
        """SIGKILL at once: a crash, nothing flushed."""
        self._kill(grace=0)

    def restart(self):
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work directory unless it was given."""
        self.stop()
        with _live_lock:
            _live.discard(self)
        if not self.keep_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _addr(self, port_name: str) -> str:
        if port_name not in self.ports:
            raise BackendError(f"{self.name}: no {port_name} port before start()")
        return f"127.0.0.1:{self.ports[port_name]}"


# --------------------------------------------------------------------------- Collector

class Collector(Backend):
    """Our Collector running a pipeline file (collector-config/<name> or a path).

    The pipeline files take their addresses from environment variables (with defaults for users);
    this class sets them to free ports on 127.0.0.1: OTLP_GRPC_ENDPOINT, OTLP_HTTP_ENDPOINT,
    PROMETHEUS_EXPORTER_ENDPOINT, HEALTH_CHECK_ENDPOINT, OTELCOL_TELEMETRY_HOST/PORT (the Collector's
    own metrics), OTELCOL_EXPORT_DIR (file exporter output). `env` adds or overrides variables
    (JAEGER_OTLP_ENDPOINT, OTLP_UPSTREAM_ENDPOINT, SPANMETRICS_FLUSH_INTERVAL, ...).
    """

    name = "otelcol"
    port_names = ("otlp_grpc", "otlp_http", "prometheus", "telemetry", "health")

    def __init__(self, config_file: str | os.PathLike, env: Mapping[str, str] | None = None, **kw):
        super().__init__(**kw)
        self.config_file = collector_config(config_file)
        self.env = dict(env or {})
        self.binary = ensure_otelcol()

    def _command(self) -> list[str]:
        return [str(self.binary), f"--config={self.config_file}"]

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.pipeline_env(), **self.env}

    def pipeline_env(self) -> dict[str, str]:
        """The environment our pipeline files read, pointing at this Collector's ports."""
        return {
            "OTLP_GRPC_ENDPOINT": self._addr("otlp_grpc"),
            "OTLP_HTTP_ENDPOINT": self._addr("otlp_http"),
            "PROMETHEUS_EXPORTER_ENDPOINT": self._addr("prometheus"),
            "HEALTH_CHECK_ENDPOINT": self._addr("health"),
            "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
            "OTELCOL_TELEMETRY_PORT": str(self.ports["telemetry"]),
            "OTELCOL_EXPORT_DIR": str(self.export_dir),
        }

    def _ready(self) -> bool:
        return _COLLECTOR_READY in self._log_since_start()

    @property
    def export_dir(self) -> Path:
        """Where the file exporters write (OTELCOL_EXPORT_DIR)."""
        return self.workdir / "export"

    @property
    def otlp_grpc_address(self) -> str:
        return self._addr("otlp_grpc")

    @property
    def otlp_grpc_endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT with protocol grpc (http:// = no TLS)."""
        return f"http://{self._addr('otlp_grpc')}"

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL for OTLP/HTTP (the SDK appends /v1/traces, /v1/metrics, /v1/logs)."""
        return f"http://{self._addr('otlp_http')}"

    @property
    def prometheus_exporter_address(self) -> str:
        """host:port of the pipeline's prometheus exporter (scraped at /metrics)."""
        return self._addr("prometheus")

    @property
    def telemetry_address(self) -> str:
        """host:port of the Collector's own metrics (otelcol_*, /metrics)."""
        return self._addr("telemetry")

    @property
    def health_url(self) -> str:
        return f"http://{self._addr('health')}/"

    def agent_env(self) -> dict[str, str]:
        """Environment for an OTLP exporter (the agent) sending here."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}

    def scrape(self) -> str:
        """The prometheus exporter's current text exposition."""
        status, body = http_get(f"http://{self.prometheus_exporter_address}/metrics")
        if status != 200:
            raise BackendError(f"scraping {self.prometheus_exporter_address}: HTTP {status}")
        return body.decode()


def validate_collector_config(config: str | os.PathLike, env: Mapping[str, str] | None = None
                              ) -> subprocess.CompletedProcess:
    """`otelcol-oke validate --config FILE`: raises BackendError with the Collector's words."""
    res = subprocess.run([str(ensure_otelcol()), "validate", f"--config={collector_config(config)}"],
                         env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise BackendError(f"the Collector rejects {config}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return res


# --------------------------------------------------------------------------- Jaeger

_JAEGER_CONFIG = """\
# Written by tests/testbed/backends.py: Jaeger v2, memory storage, OTLP in, query API/UI out.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    logs:
      level: info
    metrics:
      level: none          # its default would listen on localhost:8888
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    enable_tracing: false  # its default sends Jaeger's own spans to localhost:4317
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def _kv(items: list[dict] | None) -> dict[str, Any]:
    return {kv["key"]: kv.get("value") for kv in items or ()}


def _trace_id(raw: str) -> str:
    return raw.lower().rjust(32, "0")  # the v1 API drops a zero high half


def _span_id(raw: str) -> str:
    return raw.lower().rjust(16, "0")


def _plain_trace(data: dict) -> dict:
    """A v1 API trace as plain dicts: one per span, service and process tags folded in."""
    processes = data.get("processes") or {}
    spans = []
    for s in data.get("spans") or ():
        proc = processes.get(s.get("processID"), {})
        refs = [{"ref_type": r.get("refType"), "trace_id": _trace_id(r.get("traceID", "")),
                 "span_id": _span_id(r.get("spanID", ""))} for r in s.get("references") or ()]
        parent = next((r["span_id"] for r in refs if r["ref_type"] == "CHILD_OF"), None)
        tags = _kv(s.get("tags"))
        spans.append({
            "trace_id": _trace_id(s["traceID"]),
            "span_id": _span_id(s["spanID"]),
            "parent_span_id": parent,
            "references": refs,
            "operation": s.get("operationName"),
            "kind": tags.get("span.kind", "internal"),
            "start_us": s.get("startTime"),
            "duration_us": s.get("duration"),
            "tags": tags,
            "events": [{"timestamp_us": e.get("timestamp"), "fields": _kv(e.get("fields"))}
                       for e in s.get("logs") or ()],
            "service": proc.get("serviceName"),
            "process_tags": _kv(proc.get("tags")),
            "warnings": s.get("warnings") or [],
        })
    return {"trace_id": _trace_id(data.get("traceID", spans[0]["trace_id"] if spans else "")),
            "spans": spans,
            "services": sorted({s["service"] for s in spans if s["service"]})}


class Jaeger(Backend):
    """Jaeger v2 with memory storage: OTLP in (gRPC and HTTP), the query HTTP API and UI out.

    The UI page is a placeholder (the Go module carries no UI assets); the API is complete.
    """

    name = "jaeger"
    port_names = ("otlp_grpc", "otlp_http", "query_http", "query_grpc")

    def __init__(self, max_traces: int = 100_000, **kw):
        super().__init__(**kw)
        self.max_traces = max_traces
        self.binary = ensure_jaeger()

    @property
    def config_file(self) -> Path:
        return self.workdir / "jaeger.yaml"

    def _prepare(self) -> None:
        self.config_file.write_text(_JAEGER_CONFIG.format(max_traces=self.max_traces, **self.ports))

    def _command(self) -> list[str]:
        return [str(self.binary), f"--config={self.config_file}"]

    def _ready(self) -> bool:
        return http_get(f"{self.query_url}/api/services", timeout=1)[0] == 200

    @property
    def otlp_grpc_address(self) -> str:
        return self._addr("otlp_grpc")

    @property
    def otlp_http_endpoint(self) -> str:
        return f"http://{self._addr('otlp_http')}"

    @property
    def query_url(self) -> str:
        """Base of the HTTP query API (/api/...) and the UI."""
        return f"http://{self._addr('query_http')}"

    ui_url = query_url

    # -- query API (v1 JSON, as the UI uses it)
    def services(self) -> list[str]:
        return sorted(_get_json(f"{self.query_url}/api/services").get("data") or [])

    def operations(self, service: str, span_kind: str | None = None) -> list[dict]:
        """[{"name": ..., "span_kind": ...}] of a service (span_kind: server, client, producer, ...)."""
        params = {"service": service, **({"spanKind": span_kind} if span_kind else {})}
        data = _get_json(f"{self.query_url}/api/operations", params).get("data") or []
        return [{"name": o.get("name"), "span_kind": o.get("spanKind")} for o in data]

    def traces(self, service: str, lookback: float = 3600, limit: int = 20,
               operation: str | None = None, tags: Mapping[str, str] | None = None) -> list[dict]:
        """Traces with a span of `service` started in the last `lookback` seconds (newest first)."""
        now_us = int(time.time() * 1e6)
        params: dict[str, Any] = {"service": service, "limit": limit,
                                  "start": now_us - int(lookback * 1e6), "end": now_us + 60_000_000}
        if operation:
            params["operation"] = operation
        if tags:
            params["tags"] = json.dumps(dict(tags))
        data = _get_json(f"{self.query_url}/api/traces", params).get("data") or []
        return [_plain_trace(t) for t in data]

    def trace(self, trace_id: str | int) -> dict | None:
        """One trace by id (32 hex digits or an int); None if Jaeger does not have it."""
        tid = f"{trace_id:032x}" if isinstance(trace_id, int) else trace_id
        status, body = http_get(f"{self.query_url}/api/traces/{tid}", timeout=10)
        if status == 404:
            return None
        if status != 200:
            raise BackendError(f"GET trace {tid}: HTTP {status} {body[:300]!r}")
        data = json.loads(body).get("data") or []
        return _plain_trace(data[0]) if data else None

    def wait_for_trace(self, trace_id: str | int, spans: int = 1, timeout: float = 30.0) -> dict:
        """The trace once Jaeger holds at least `spans` of its spans."""
        def probe():
            t = self.trace(trace_id)
            return t if t and len(t["spans"]) >= spans else None
        return wait_until(probe, timeout, what=f"trace {trace_id} with {spans} span(s) in Jaeger")

    def dependencies(self, lookback: float = 3600) -> list[dict]:
        """Service edges [{"parent", "child", "call_count"}] from parent/child spans (memory store)."""
        params = {"endTs": int(time.time() * 1000) + 60_000, "lookback": int(lookback * 1000)}
        data = _get_json(f"{self.query_url}/api/dependencies", params).get("data") or []
        return [{"parent": d.get("parent"), "child": d.get("child"),
                 "call_count": d.get("callCount", 0)} for d in data]


# --------------------------------------------------------------------------- Prometheus

class Prometheus(Backend):
    """Prometheus (Debian package) scraping `scrape_targets` every `scrape_interval`.

    scrape_targets: ["host:port", ...] (one job "otelcol"), or {job: ["host:port", ...]}. Labels the
    target sets are kept (honor_labels): the Collector's prometheus exporter labels each series with
    job = service.name, instance = service.instance.id.
    """

    name = "prometheus"
    port_names = ("web",)

    def __init__(self, scrape_targets: list[str] | Mapping[str, list[str]] = (),
                 scrape_interval: str = "1s", **kw):
        super().__init__(**kw)
        self.scrape_targets = (dict(scrape_targets) if isinstance(scrape_targets, Mapping)
                               else {"otelcol": list(scrape_targets)})
        self.scrape_interval = scrape_interval
        self.binary = prometheus_binary()

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    def _prepare(self) -> None:
        jobs = [{"job_name": job, "honor_labels": True, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.scrape_targets.items()]
        config = {"global": {"scrape_interval": self.scrape_interval,
                             "scrape_timeout": self.scrape_interval,
                             "evaluation_interval": self.scrape_interval},
                  "scrape_configs": jobs}
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML

    def _command(self) -> list[str]:
        return [str(self.binary), f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self._addr('web')}", "--log.level=info",
                # targets are picked up 5 s after start by default; a test bed wants them at once
                "--scrape.discovery-reload-interval=500ms"]

    def _ready(self) -> bool:
        return http_get(f"{self.url}/-/ready", timeout=1)[0] == 200

    @property
    def url(self) -> str:
        return f"http://{self._addr('web')}"

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """Instant query: [(labels including __name__, value)]."""
        params = {"query": promql, **({"time": at} if at is not None else {})}
        reply = _get_json(f"{self.url}/api/v1/query", params)
        if reply.get("status") != "success":
            raise BackendError(f"query {promql!r}: {reply}")
        data = reply["data"]
        if data["resultType"] == "vector":
            return [(r["metric"], float(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        raise BackendError(f"query {promql!r}: unexpected result type {data['resultType']}")

    def wait_for(self, promql: str, timeout: float = 30.0,
                 predicate: Callable[[list], bool] = bool) -> list[tuple[dict[str, str], float]]:
        """query() until predicate(result) holds (default: not empty)."""
        def probe():
            result = self.query(promql)
            return result if predicate(result) else None
        return wait_until(probe, timeout, what=f"Prometheus query {promql!r}")

    def metric_names(self) -> list[str]:
        return _get_json(f"{self.url}/api/v1/label/__name__/values").get("data") or []

    def targets(self) -> list[dict]:
        """Active scrape targets: [{"job", "url", "health", "last_error"}]."""
        active = _get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]
        return [{"job": t["labels"].get("job"), "url": t.get("scrapeUrl"), "health": t.get("health"),
                 "last_error": t.get("lastError")} for t in active]


# --------------------------------------------------------------------------- all three

class OtelBackends:
    """Jaeger, a Collector running `pipeline` (traces to Jaeger, metrics to its prometheus
    exporter) and Prometheus scraping that exporter and the Collector's own metrics.

    The agent sends to otlp_grpc_endpoint / otlp_http_endpoint (agent_env() sets both variables).
    ports: fixed ports for the command line's `up` ({"otlp_grpc", "otlp_http", "jaeger_ui",
    "prometheus"}); tests leave them free.
    """

    def __init__(self, pipeline: str | os.PathLike = "agent-gateway.yaml",
                 workdir: str | os.PathLike | None = None, collector_env: Mapping[str, str] | None = None,
                 scrape_interval: str = "1s", ports: Mapping[str, int] | None = None,
                 daemon: bool = False):
        ports = dict(ports or {})
        self.keep_dir = workdir is not None or _keep_dirs()
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="oke-backends-"))
        self.jaeger = Jaeger(workdir=self.workdir / "jaeger", daemon=daemon,
                             ports={"query_http": ports["jaeger_ui"]} if "jaeger_ui" in ports else None)
        collector_ports = {k: ports[k] for k in ("otlp_grpc", "otlp_http") if k in ports}
        self._collector_env = {
            "SPANMETRICS_FLUSH_INTERVAL": "1s",  # span metrics visible within a scrape or two
            **(collector_env or {}),
        }
        self.collector = Collector(pipeline, env=self._collector_env, workdir=self.workdir / "otelcol",
                                   ports=collector_ports, daemon=daemon)
        self._prometheus_ports = {"web": ports["prometheus"]} if "prometheus" in ports else None
        self.scrape_interval = scrape_interval
        self.daemon = daemon
        self.prometheus: Prometheus | None = None

    def __enter__(self) -> "OtelBackends":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "OtelBackends":
        try:
            self.jaeger.start()
            self.collector.env.setdefault("JAEGER_OTLP_ENDPOINT", self.jaeger.otlp_grpc_address)
            self.collector.start()
            if self.prometheus is None:
                self.prometheus = Prometheus(
                    {"otelcol": [self.collector.prometheus_exporter_address],
                     "otelcol-self": [self.collector.telemetry_address]},
                    scrape_interval=self.scrape_interval, workdir=self.workdir / "prometheus",
                    ports=self._prometheus_ports, daemon=self.daemon)
            self.prometheus.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for b in (self.prometheus, self.collector, self.jaeger):
            if b is not None:
                b.stop()

    def close(self) -> None:
        for b in (self.prometheus, self.collector, self.jaeger):
            if b is not None:
                b.close()
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def otlp_grpc_endpoint(self) -> str:
        return self.collector.otlp_grpc_endpoint

    @property
    def otlp_http_endpoint(self) -> str:
        return self.collector.otlp_http_endpoint

    def agent_env(self) -> dict[str, str]:
        return self.collector.agent_env()

    @contextlib.contextmanager
    def collector_down(self, kill: bool = False) -> Iterator[Collector]:
        """The Collector stopped (SIGKILL if kill) inside the block, back on the same ports after."""
        if kill:
            self.collector.kill()
        else:
            self.collector.stop()
        try:
            yield self.collector
        finally:
            self.collector.start()

    def describe(self) -> str:
        """Where to look, one line each."""
        c = self.collector
        return "\n".join([
            f"OTLP gRPC (the agent): OTEL_EXPORTER_OTLP_ENDPOINT={c.otlp_grpc_endpoint}",
            f"OTLP HTTP:             {c.otlp_http_endpoint}  (/v1/traces, /v1/metrics, /v1/logs)",
            f"Jaeger query API:      {self.jaeger.query_url}/api/services  /api/traces?service=NAME  "
            f"/api/dependencies?endTs=MS&lookback=MS  (the UI page is a placeholder: "
            f"the Go module has no UI assets)",
            f"Prometheus:            {self.prometheus.url if self.prometheus else '-'}/  (/api/v1/query?query=...)",
            f"Collector exports:     http://{c.prometheus_exporter_address}/metrics (pipeline), "
            f"http://{c.telemetry_address}/metrics (its own), {c.health_url} (health)",
            f"Collector pipeline:    {c.config_file}",
            f"Logs:                  {c.log_file}  {self.jaeger.log_file}  "
            f"{self.prometheus.log_file if self.prometheus else ''}  (file exporters: {c.export_dir})",
        ])


# --------------------------------------------------------------------------- CLI

_STATE = "backends.json"


def _run_dir(otlp_port: int, d: str | None) -> Path:
    return Path(d) if d else cache_dir() / "run" / f"backends-{otlp_port}"


def _live_pids(run_dir: Path) -> dict[str, int]:
    """{name: pid} of the processes started in run_dir that still run there."""
    try:
        state = json.loads((run_dir / _STATE).read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name, pid in state.get("pids", {}).items():
        with contextlib.suppress(OSError):
            # our processes run in their work directory: a reused pid elsewhere is not ours
            if Path(os.readlink(f"/proc/{pid}/cwd")) == run_dir.resolve() / name:
                out[name] = pid
    return out


def _cli_down(run_dir: Path) -> None:
    for name, pid in _live_pids(run_dir).items():
        terminate(pid, grace=10)
        print(f"backends: stopped {name} (pid {pid})")
    with contextlib.suppress(FileNotFoundError):
        (run_dir / _STATE).unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.testbed.backends",
                                 description="OpenTelemetry Collector, Jaeger and Prometheus on 127.0.0.1")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the Collector and Jaeger (cached); print the binaries")
    for name in ("up", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--otlp-grpc-port", type=int, default=4317,
                       help="the Collector's OTLP gRPC port (also names the run directory)")
        p.add_argument("--dir", default=None, help="run directory (default $OKE_CACHE/run/backends-PORT)")
        if name == "up":
            p.add_argument("--otlp-http-port", type=int, default=4318)
            p.add_argument("--jaeger-port", type=int, default=16686, help="Jaeger query API/UI")
            p.add_argument("--prometheus-port", type=int, default=9090)
            p.add_argument("--pipeline", default="agent-gateway.yaml",
                           help="Collector config: a file in collector-config/ or a path")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            for name, path in ensure_all(quiet=False).items():
                print(f"{name}: {path}")
            return 0
        run_dir = _run_dir(args.otlp_grpc_port, args.dir)
        live = _live_pids(run_dir)
        state_file = run_dir / _STATE
        if args.cmd == "down":
            if not live:
                print(f"backends: not running ({run_dir})")
            _cli_down(run_dir)
            return 0
        if args.cmd == "status":
            state = json.loads(state_file.read_text()) if live else {}
            healthy = 0
            for name in ("jaeger", "otelcol", "prometheus"):
                if name not in live:
                    print(f"{name}: not running")
                    continue
                url = state.get("probes", {}).get(name, "")
                answers = http_get(url, timeout=2)[0] == 200
                healthy += answers
                print(f"{name}: running (pid {live[name]}), {url} " + ("answers" if answers else "DOES NOT ANSWER"))
            if healthy == 3:
                print(state.get("describe", ""))
                return 0
            return 1
        # up
        if len(live) == 3:
            print("backends: already up\n" + json.loads(state_file.read_text()).get("describe", ""))
            return 0
        _cli_down(run_dir)  # a partial set from before
        wanted = {"otlp_grpc": args.otlp_grpc_port, "otlp_http": args.otlp_http_port,
                  "jaeger_ui": args.jaeger_port, "prometheus": args.prometheus_port}
        busy = [f"{k}={v}" for k, v in wanted.items() if port_open(v)]
        if busy:
            print(f"backends: port(s) in use: {', '.join(busy)}; choose others, e.g. "
                  f"make backends-up BACKENDS_OTLP_PORT=24317 JAEGER_PORT=26686 PROMETHEUS_PORT=29090",
                  file=sys.stderr)
            return 1
        run_dir.mkdir(parents=True, exist_ok=True)
        ob = OtelBackends(args.pipeline, workdir=run_dir, ports=wanted, daemon=True)
        try:
            ob.start()
        except BaseException:
            ob.stop()
            raise
        describe = ob.describe()
        state_file.write_text(json.dumps({
            "pids": {"jaeger": ob.jaeger.pid, "otelcol": ob.collector.pid, "prometheus": ob.prometheus.pid},
            "probes": {"jaeger": f"{ob.jaeger.query_url}/api/services", "otelcol": ob.collector.health_url,
                       "prometheus": f"{ob.prometheus.url}/-/ready"},
            "describe": describe}, indent=2) + "\n")
        down = "make backends-down" + (f" BACKENDS_OTLP_PORT={args.otlp_grpc_port}"
                                       if args.otlp_grpc_port != 4317 else "")
        print(f"backends: up (run directory {run_dir}; `{down}` stops them)\n{describe}")
        return 0
    except BackendError as e:
        print(f"backends: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
