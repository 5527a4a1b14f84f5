"""Agent settings: a TOML file, then `OKE_*` environment variables, then command-line flags.

Validation errors become one line naming the field, never a traceback.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(Exception):
    """A setting the agent cannot use; str() is one line for the user."""


class CaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame_budget: int = Field(1 << 20, ge=64, le=1 << 30, description="bytes copied per Kafka frame")
    ringbuf_mb: int = Field(64, ge=1, le=4096, description="ring buffer size in MiB")
    pids: list[int] = Field(default_factory=list, description="only these processes")
    cgroup: str | None = Field(None, description="only this cgroup v2 directory (sidecar mode)")
    kafka_ports: list[int] = Field(default_factory=list, description="ports always treated as Kafka")
    ports_only: bool = Field(False, description="only connections on kafka_ports")
    server_side: bool = Field(False, description="also capture connections processes accepted (brokers)")

    @field_validator("kafka_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 0 < p < 65536]
        if bad:
            raise ValueError(f"not a TCP port: {bad[0]}")
        if len(v) > 8:
            raise ValueError("at most 8 ports")
        return v

    @field_validator("pids")
    @classmethod
    def _pids(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if p <= 0]
        if bad:
            raise ValueError(f"not a process id: {bad[0]}")
        return v


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capture: CaptureConfig = Field(default_factory=CaptureConfig)


_ENV_PREFIX = "OKE_CAPTURE_"
_LIST_FIELDS = {"pids", "kafka_ports"}


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CaptureConfig.model_fields:
        raw = os.environ.get(_ENV_PREFIX + name.upper())
        if raw is None:
            continue
        out[name] = [x for x in raw.replace(",", " ").split()] if name in _LIST_FIELDS else raw
    return out


def _one_line(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {err['msg']}{more}"


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    data: dict[str, Any] = {}
    source = "config"
    if path:
        source = path
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    capture = dict(data.get("capture", {}) or {})
    capture.update(_from_env())
    capture.update({k: v for k, v in (overrides or {}).items() if v not in (None, [], ())})
    data["capture"] = capture
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
