"""Agent settings: a TOML file, then environment variables, then command-line flags (each wins over the last).

Tables: [capture], [exporter], [spans], [metrics], [agent], [lag]. Every field can also be set by an
environment variable `OKE_<TABLE>_<FIELD>` (lists comma- or space-separated), and the standard
OpenTelemetry variables are honoured where they mean the same thing (OTEL_EXPORTER_OTLP_*,
OTEL_TRACES_SAMPLER(_ARG), OTEL_TRACES_EXPORTER, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL); an OKE_ variable wins over its OTEL_ twin.
Validation errors become one line naming the setting, never a traceback.
"""

from __future__ import annotations

import math
import os
import tomllib
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .capture.events import MAX_KAFKA_PORTS, MAX_PIDS
from .capture.loader import DEFAULT_FRAME_BUDGET, DEFAULT_RINGBUF_BYTES, MIN_FRAME_BUDGET


class ConfigError(Exception):
    """A setting the agent cannot use; str() is one line for the user."""


PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT
_NUMBERS = (int, float, float | None, list[int])


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: Any, info) -> Any:
        """TOML's true is not the number 1 (pydantic would take it as one)."""
        if cls.model_fields[info.field_name].annotation in _NUMBERS and (
                isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v))):
            raise ValueError("Input should be a number, not true or false")
        return v


class CaptureConfig(_Table):
    frame_budget: int = Field(DEFAULT_FRAME_BUDGET, ge=MIN_FRAME_BUDGET, le=1 << 30,
                              description="bytes copied per Kafka frame")
    ringbuf_mb: int | None = Field(None, ge=1, le=4096, description="ring buffer size in MiB "
                                   f"({DEFAULT_RINGBUF_BYTES['digest'] >> 20} digest, "
                                   f"{DEFAULT_RINGBUF_BYTES['full'] >> 20} full)")
    mode: Literal["digest", "full"] = Field("digest", description="digest: record batch headers only; "
                                               "full: whole frames under frame_budget (the oracle)")
    record_prefix: int = Field(0, ge=0, le=1 << 20, description="digest: record bytes copied after the header "
                               "of each uncompressed batch (traceparent links); 0: none")
    pids: list[int] = Field(default_factory=list, description="only these processes")
    cgroup: str | None = Field(None, description="only this cgroup v2 directory (sidecar mode)")
    kafka_ports: list[int] = Field(default_factory=list, description="ports always treated as Kafka")
    ports_only: bool = Field(False, description="only connections on kafka_ports")
    server_side: bool = Field(False, description="also capture connections processes accepted (brokers)")
    walker: Literal["auto", "heads"] = Field("auto", description="auto: the frame walker, or frame heads only if "
                                              "the kernel refuses it; heads: frame heads only")
    simulate_refusal: bool = Field(False, description="testing aid: the frame walker does what the verifier "
                                   "refuses, so the agent falls back as on a kernel that refuses it")

    @field_validator("kafka_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 0 < p < 65536]
        if bad:
            raise ValueError(f"not a TCP port: {bad[0]}")
        if len(v) > MAX_KAFKA_PORTS:
            raise ValueError(f"at most {MAX_KAFKA_PORTS} ports")
        return v

    @field_validator("pids")
    @classmethod
    def _pids(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 0 < p <= PID_MAX]
        if bad:
            raise ValueError(f"not a process id: {bad[0]}")
        if len(set(v)) > MAX_PIDS:
            raise ValueError(f"at most {MAX_PIDS} processes")
        return v


class _Refused(str):
    """Why an environment variable's value has no setting to become; validation says it."""


ExporterType = Literal["otlp", "otlp-http", "file", "console", "none"]
EXPORTER_TYPES = ("otlp", "otlp-http", "file", "console", "none")


class ExporterConfig(_Table):
    type: ExporterType = Field("otlp", description="otlp (gRPC), otlp-http, file (OTLP JSON lines), console, none")

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: Any) -> Any:
        if isinstance(v, _Refused):
            raise ValueError(str(v))
        if v not in EXPORTER_TYPES:
            raise ValueError(f"{v!r} is not one of {', '.join(EXPORTER_TYPES)} (OTLP protocols: grpc, http/protobuf)")
        return v

    endpoint: str | None = Field(None, description="OTLP endpoint; default localhost:4317 (gRPC), "
                                                   "http://localhost:4318 (HTTP)")
    traces_endpoint: str | None = Field(None, description="OTLP/HTTP: full URL for traces")
    metrics_endpoint: str | None = Field(None, description="OTLP/HTTP: full URL for metrics")
    logs_endpoint: str | None = Field(None, description="OTLP/HTTP: full URL for logs")
    headers: dict[str, str] = Field(default_factory=dict, description="headers sent with every export")
    timeout_s: float = Field(10.0, gt=0, le=600, description="seconds one export may take")
    compression: Literal["none", "gzip"] = Field("none", description="none or gzip")
    insecure: bool | None = Field(None, description="gRPC without TLS (default: from the endpoint's scheme)")
    certificate: str | None = Field(None, description="CA certificate file (PEM) to trust")
    client_certificate: str | None = Field(None, description="client certificate (PEM) for mTLS")
    client_key: str | None = Field(None, description="client key (PEM) for mTLS")
    file_path: str | None = Field(None, description="type file: where to write (default: standard output)")
    max_queue_spans: int = Field(65536, ge=1, le=10_000_000, description="spans kept while the backend is slow")
    max_batch_spans: int = Field(512, ge=1, le=100_000, description="spans per export request (at most max_queue_spans)")
    schedule_delay_ms: int = Field(1000, ge=10, le=600_000, description="longest wait before spans are sent")

    @field_validator("endpoint", "traces_endpoint", "metrics_endpoint", "logs_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(f"{v!r}: spaces or control characters in an endpoint")
        try:
            target = urlsplit(v if "://" in v else "//" + v)
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from None
        if "://" in v and target.scheme not in ("http", "https", "unix"):
            raise ValueError(f"{v!r}: scheme must be http or https")
        try:
            target.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{v!r}: not a valid port") from None
        if target.scheme != "unix" and not target.hostname:
            raise ValueError(f"{v!r}: no host")
        return v

    @field_validator("certificate", "client_certificate", "client_key")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v and not os.path.isfile(v):
            raise ValueError(f"{v}: {'not a file' if os.path.exists(v) else 'no such file'}")
        return v

    @model_validator(mode="after")
    def _mtls_pair(self) -> "ExporterConfig":
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together")
        return self


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")


class SpansConfig(_Table):
    enabled: bool = Field(True, description="export send and poll spans")
    sampler: str = Field("parentbased_always_on", description="OTEL_TRACES_SAMPLER: " + ", ".join(SAMPLERS))
    sampler_arg: float | None = Field(None, description="OTEL_TRACES_SAMPLER_ARG: the ratio for *traceidratio")
    links: bool = Field(True, description="link poll spans to the records' traceparent headers when captured")

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r} (one of {', '.join(SAMPLERS)})")
        return v

    @field_validator("sampler_arg", mode="before")
    @classmethod
    def _ratio(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not a number between 0 and 1")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is not a number between 0 and 1") from None
        if not 0.0 <= f <= 1.0 or math.isnan(f):
            raise ValueError(f"{v!r} is not a number between 0 and 1")
        return f

    @property
    def ratio(self) -> float:
        """The fraction of traces kept."""
        if self.sampler in ("always_off", "parentbased_always_off"):
            return 0.0
        if self.sampler.endswith("traceidratio"):
            return 1.0 if self.sampler_arg is None else self.sampler_arg
        return 1.0


class MetricsConfig(_Table):
    export_interval_ms: int = Field(1000, ge=100, le=3_600_000, description="OTEL_METRIC_EXPORT_INTERVAL")


class AgentSettings(_Table):
    service_name: str = Field("otel-kafka-ebpf", min_length=1, description="the agent's own service.name")
    resource_attributes: dict[str, str] = Field(default_factory=dict,
                                                description="added to every resource (OTEL_RESOURCE_ATTRIBUTES)")
    host_name: str | None = Field(None, description="host.name (default: this host's name)")
    discover_metadata: bool = Field(True, description="ask a broker for Metadata when a connection's cluster or "
                                                      "topic names are unknown (agent started after its clients)")
    poll_high_watermarks: bool = Field(True, description="ask the leader for the high watermark of a stopped "
                                                         "consumer's partitions every second (when the node sees "
                                                         "no producer of them)")
    resolve_wait_s: float = Field(10.0, ge=0, le=600, description="how long a batch waits for its cluster/topic")
    group_wait_s: float = Field(6.0, ge=0, le=600, description="how long a joined-mid-stream consumer's batches "
                                                               "wait for its group")
    broker_traffic: bool = Field(False, description="also report brokers' own connections (controller, replication)")
    command_args: bool = Field(False, description="export process.command_args (may hold secrets)")


class LagConfig(_Table):
    """The consumer status and lag-cause rules (README: "Status"); each status record carries them."""

    grace_s: float = Field(0.4, ge=0.05, le=600, description="a fetch may always be this late before STOP")
    pace_margin: float = Field(3.0, ge=1, le=100, description="STOP when overdue by this many times the records in "
                               "its hands x its current time per record")
    stall_s: float = Field(0.5, ge=0.05, le=600, description="STALL: fetching the same position this long with "
                           "messages waiting")
    window_s: float = Field(5.0, ge=0.5, le=3600, description="the lag's trend, rates and ETA over at least this")
    min_samples: int = Field(6, ge=3, le=200, description="and over at least this many fetches")
    warn_rise: float = Field(10.0, ge=0, le=1e9, description="WARN: the fitted lag rises this many messages over "
                             "the window")
    hold_warn_s: float = Field(1.0, ge=0, le=3600, description="OK -> WARN once the rising trend held this long")
    hold_ok_s: float = Field(5.0, ge=0, le=3600, description="WARN -> OK once the lag stopped rising this long")
    hold_stop_s: float = Field(0.0, ge=0, le=60, description="-> STOP/STALL once its evidence held this long")
    hold_cause_s: float = Field(1.0, ge=0, le=3600, description="a new cause once the evidence left the old one this long")
    processing_factor: float = Field(3.0, ge=1, le=1000, description="cause processing: time per record this "
                                     "many times what it was while caught up")
    processing_min_ms: float = Field(1.0, ge=0, le=60_000, description="and at least this per record")
    broker_factor: float = Field(3.0, ge=1, le=1000, description="cause broker: fetch latency this many times "
                                 "its usual")
    broker_min_ms: float = Field(50.0, ge=0, le=600_000, description="and at least this")
    burst_factor: float = Field(1.5, ge=1, le=1000, description="cause producer_burst: the produce rate this many "
                                "times what it was while caught up")
    fill_ratio: float = Field(0.9, gt=0, le=1, description="cause fetch_capacity: responses this full of "
                              "partition.max.bytes")
    caught_up_s: float = Field(1.0, ge=0, le=3600, description="lag in seconds at most this: caught up, cause none")
    objective_s: float = Field(60.0, gt=0, le=86400 * 7, description="the lag-in-seconds objective whose breach "
                               "is estimated")
    forget_s: float = Field(60.0, ge=1, le=86400, description="a stopped instance's partitions are reported this "
                            "long")


class AgentConfig(_Table):
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    spans: SpansConfig = Field(default_factory=SpansConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    lag: LagConfig = Field(default_factory=LagConfig)


_FLAG_NAMES = {"kafka_ports": "--kafka-port", "pids": "--capture-pid", "type": "--exporter"}
_TABLES = {"capture": CaptureConfig, "exporter": ExporterConfig, "spans": SpansConfig, "metrics": MetricsConfig,
           "agent": AgentSettings, "lag": LagConfig}
_LIST_FIELDS = {"pids", "kafka_ports"}
_DICT_FIELDS = {"headers", "resource_attributes"}


def parse_key_values(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES)."""
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item.strip()!r} is not key=value")
        out[key.strip()] = unquote(value.strip())
    return out


_OTEL_EXPORTER_VARS = (
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces_endpoint"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "metrics_endpoint"), ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "logs_endpoint"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "certificate"),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "client_certificate"),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "client_key"), ("OTEL_EXPORTER_OTLP_INSECURE", "insecure"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "compression"), ("OTEL_EXPORTER_OTLP_HEADERS", "headers"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "max_queue_spans"), ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_batch_spans"),
    ("OTEL_BSP_SCHEDULE_DELAY", "schedule_delay_ms"),
)


def _otel_env(env: dict[str, str], origins: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    """The standard OpenTelemetry variables, as settings; `origins` learns which variable set what."""
    out: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    exp, spans, agent = out["exporter"], out["spans"], out["agent"]

    def get(name: str) -> str | None:
        v = env.get(name)
        return v if v is not None and v.strip() != "" else None

    type_var = None
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = get(var)
        if protocol is not None:
            type_var = var
            exp["type"] = {"grpc": "otlp", "http/protobuf": "otlp-http"}.get(protocol.strip()) or _Refused(
                f"{protocol.strip()!r} is not a protocol this agent speaks (OTLP protocols: grpc, http/protobuf)")
            break
    traces_exporter = get("OTEL_TRACES_EXPORTER")
    if traces_exporter is not None:
        first = traces_exporter.split(",")[0].strip()
        if first == "none":
            spans["enabled"] = False
        elif first == "console":
            exp["type"], type_var = "console", "OTEL_TRACES_EXPORTER"
        elif first != "otlp":
            exp["type"], type_var = _Refused(f"{first!r} is not an exporter this agent has (otlp, console or none)"), \
                "OTEL_TRACES_EXPORTER"
    for var, key in _OTEL_EXPORTER_VARS:
        v = get(var)
        if v is not None:
            exp[key] = (var, v) if key in _DICT_FIELDS else v.strip()
    timeout = get("OTEL_EXPORTER_OTLP_TIMEOUT")
    if timeout is not None:
        try:
            exp["timeout_s"] = float(timeout) / 1000.0
        except ValueError:
            exp["timeout_s"] = timeout  # validation names it
    if get("OTEL_TRACES_SAMPLER") is not None:
        spans["sampler"] = env["OTEL_TRACES_SAMPLER"]
    if get("OTEL_TRACES_SAMPLER_ARG") is not None:
        spans["sampler_arg"] = env["OTEL_TRACES_SAMPLER_ARG"]
    if get("OTEL_METRIC_EXPORT_INTERVAL") is not None:
        out["metrics"]["export_interval_ms"] = env["OTEL_METRIC_EXPORT_INTERVAL"]
    if get("OTEL_SERVICE_NAME") is not None:
        agent["service_name"] = env["OTEL_SERVICE_NAME"]
    if get("OTEL_RESOURCE_ATTRIBUTES") is not None:
        agent["resource_attributes"] = ("OTEL_RESOURCE_ATTRIBUTES", env["OTEL_RESOURCE_ATTRIBUTES"])
    names = {("exporter", "type"): type_var,
             ("exporter", "timeout_s"): "OTEL_EXPORTER_OTLP_TIMEOUT", ("spans", "sampler"): "OTEL_TRACES_SAMPLER",
             ("spans", "sampler_arg"): "OTEL_TRACES_SAMPLER_ARG", ("spans", "enabled"): "OTEL_TRACES_EXPORTER",
             ("metrics", "export_interval_ms"): "OTEL_METRIC_EXPORT_INTERVAL",
             ("agent", "service_name"): "OTEL_SERVICE_NAME"}
    for var, key in _OTEL_EXPORTER_VARS:
        names[("exporter", key)] = var
    for table, values in out.items():
        for key in values:
            origins[(table, key)] = names.get((table, key), "environment")
    return out


def _oke_env(env: dict[str, str], origins: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    for table, model in _TABLES.items():
        for name in model.model_fields:
            var = f"OKE_{table.upper()}_{name.upper()}"
            raw = env.get(var)
            if raw is None or not raw.strip():  # empty is unset, as for the OTEL_ variables
                continue
            origins[(table, name)] = var
            if name in _LIST_FIELDS:
                out[table][name] = [x for x in raw.replace(",", " ").split()]
            elif name in _DICT_FIELDS:
                out[table][name] = (var, raw)
            else:
                out[table][name] = raw
    return out


def _one_line(exc: ValidationError, source: str, origins: dict[tuple[str, str], str]) -> str:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    where = ".".join(loc) or "config"
    origin = origins.get(loc[:2], source) if len(loc) >= 2 else source
    if origin.startswith("OTEL_") or origin.startswith("OKE_") or origin.startswith("--"):
        where = f"{where} (set by {origin})"
        origin = source if source != "config" else "settings"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{origin}: {where}: {msg}{more}"


def _expand_dicts(table: str, values: dict[str, Any]) -> None:
    """Key-value strings from the environment become tables; a bad one is one clear error."""
    for name in _DICT_FIELDS:
        value = values.get(name)
        if isinstance(value, tuple):
            var, raw = value
            try:
                values[name] = parse_key_values(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}: {exc}") from None


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None, *,
                environ: dict[str, str] | None = None) -> AgentConfig:
    """Settings from `path` (TOML), the environment and `overrides` (flags: {"capture": {...}, ...} or
    capture fields at the top level), validated."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "config"
    if path:
        source = path
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    unknown = [k for k in data if k not in _TABLES]
    if unknown:
        raise ConfigError(f"{source}: unknown table [{unknown[0]}] (tables: {', '.join(_TABLES)})")
    flags = dict(overrides or {})
    flat_capture = {k: flags.pop(k) for k in list(flags) if k not in _TABLES}
    if flat_capture:
        flags.setdefault("capture", {}).update(flat_capture)
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, str], str] = {}
    otel, oke = _otel_env(env, origins), _oke_env(env, origins)
    for table, values in flags.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if value not in (None, [], ()):
                    origins[(table, key)] = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
    for layer, layer_name in ((data, source), (otel, "environment"), (oke, "environment"), (flags, "flags")):
        for table in _TABLES:
            values = layer.get(table)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{layer_name}: [{table}] must be a table of settings, not {type(values).__name__}")
            values = {k: v for k, v in values.items() if v not in (None, [], ())}
            _expand_dicts(table, values)
            merged.setdefault(table, {}).update(values)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source, origins)) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '""'


def describe(cfg: AgentConfig) -> str:
    """The settings in force as a commented TOML file (unset optional settings commented out)."""
    lines = []
    for table, model in _TABLES.items():
        lines.append(f"[{table}]")
        values = getattr(cfg, table)
        for name, field in model.model_fields.items():
            value = getattr(values, name)
            env = f"OKE_{table.upper()}_{name.upper()}"
            lines.append(f"# {field.description} ({env})")
            lines.append(f"{'# ' if value is None else ''}{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
