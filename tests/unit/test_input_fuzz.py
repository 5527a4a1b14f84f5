"""Property-based fuzzing of the two readers of user files: the config loader and the recording reader.

Any bytes give a result or the declared error (ConfigError, RecordingError), never anything else, and the same
answer twice. Beside raw bytes, the strategies build the shapes a user or a damaged disk is likelier to give:
TOML documents with any value where a table or a setting is expected, environment variables with any text, and
real recordings with flipped bits, cuts and foreign lines. What a recording yields is well-typed, and replay's
pipeline digests it without raising.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import math
import os
import tempfile
from argparse import Namespace

from hypothesis import HealthCheck, given, settings, strategies as st

from otel_kafka_ebpf.capture.recording import RecordingError, RecordingWriter, read_recording
from otel_kafka_ebpf.capture.streams import (
    Annotation, ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)
from otel_kafka_ebpf.config import AgentConfig, ConfigError, load_config
from otel_kafka_ebpf.identity import ProcessDirectory
from otel_kafka_ebpf.pipeline import run_trace
from tests.unit.kafka import vectors

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TABLES = ("capture", "exporter", "spans", "metrics", "agent")
FIELDS = {name: list(model.model_fields) for name, model in
          zip(TABLES, (AgentConfig.model_fields[t].annotation for t in TABLES))}


def _file(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="oke-fuzz-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _outcome(call, *args, **kwargs):
    """What a call gives, in a comparable form: ("ok", value) or ("error", type, message)."""
    try:
        return ("ok", call(*args, **kwargs))
    except (ConfigError, RecordingError) as exc:
        return ("error", type(exc).__name__, str(exc))


# --- the config loader -----------------------------------------------------------------------------------------

def _toml(value) -> str:
    """A value as TOML text (inline), for the values TOML can hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


SCALARS = (st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.floats() | st.text(max_size=20)
           | st.dates() | st.times() | st.datetimes())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@st.composite
def toml_documents(draw) -> str:
    """Known tables with known and unknown settings holding any value, and top-level values where tables go."""
    lines = []
    for table in draw(st.lists(st.sampled_from(TABLES + ("other",)), unique=True, max_size=4)):
        if draw(st.booleans()):  # a table
            lines.append(f"[{table}]")
            names = FIELDS.get(table, []) + ["unknown_setting"]
            for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)):
                lines.append(f"{name} = {_toml(draw(VALUES))}")
        else:  # a value where a table is expected
            lines.insert(0, f"{table} = {_toml(draw(VALUES))}")
    return "\n".join(lines) + "\n"


def _load(data: bytes, environ: dict[str, str] | None = None):
    path = _file(data)
    try:
        outcome = _outcome(load_config, path, environ=environ or {})
        return outcome[:2] + tuple(x.replace(path, "FILE") for x in outcome[2:])
    finally:
        os.unlink(path)


@FUZZ
@given(st.binary(max_size=400))
def test_config_any_bytes(data):
    first = _load(data)
    assert first == _load(data)


@FUZZ
@given(toml_documents())
def test_config_any_toml_shape(text):
    first = _load(text.encode())
    assert first == _load(text.encode())
    if first[0] == "ok":
        assert isinstance(first[1], AgentConfig)


ENV_NAMES = ([f"OKE_{t.upper()}_{f.upper()}" for t in TABLES for f in FIELDS[t]]
             + ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_EXPORTER",
                "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_METRIC_EXPORT_INTERVAL",
                "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_COMPRESSION",
                "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30) | \
    st.sampled_from(["", " ", "nan", "inf", "-1", "0", "1e999", "true", "grpc", "http/protobuf", "a=b,c",
                     "http://localhost:4317", "9092,9093", "always_off", "traceidratio", "0.5"])


@FUZZ
@given(st.dictionaries(st.sampled_from(ENV_NAMES), ENV_TEXT, max_size=5))
def test_config_any_environment(environ):
    first = _load(b"", environ)
    assert first == _load(b"", environ)


# --- the recording reader ----------------------------------------------------------------------------------------

def _read(data: bytes):
    """(events, damage) of a recording with these bytes, or the declared error."""
    path = _file(data)
    try:
        reader = read_recording(path)
        events = list(reader)
        return ("ok", events, (reader.damage() or "").replace(path, "FILE"))
    except RecordingError as exc:
        return ("error", str(exc).replace(path, "FILE"))
    finally:
        os.unlink(path)


TYPES = {ConnectionOpened: (int, int, int, int, str, int, int, str, int, str, int, Role),
         StreamData: (int, Direction, int, int, bytes, bool), StreamGap: (int, Direction, int, int, int, GapReason),
         ConnectionClosed: (int, int), Annotation: (str, int, dict)}


def _well_typed(event) -> bool:
    fields = [getattr(event, name) for name in event.__slots__]
    return all(isinstance(v, t) and (not isinstance(v, int) or v >= 0) for v, t in zip(fields, TYPES[type(event)]))


def _replays(events) -> None:
    """Replay's pipeline (what `replay --json` runs) takes whatever the reader handed on without raising."""
    args = Namespace(json=True, pid=None, client_id=None, topic=None, api=None, stats=False)
    run_trace(iter(events), args, io.StringIO(), processes=ProcessDirectory(read_proc=False))


def _check(data: bytes) -> None:
    first = _read(data)
    assert first == _read(data)
    if first[0] == "ok":
        assert all(_well_typed(e) for e in first[1]), first[1]
        _replays(first[1])


REAL = vectors.events("go-live-6p")[:60]


def _recording(events, every: int = 10) -> bytes:
    path = _file(b"")
    try:
        with RecordingWriter(path, source="fuzz") as w:
            for i, event in enumerate(events, 1):
                w.write(event)
                if i % every == 0:
                    w.flush()
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


RECORDING = _recording(REAL)
TEXT = gzip.decompress(RECORDING)


@FUZZ
@given(st.binary(max_size=400))
def test_recording_any_bytes(data):
    _check(data)


@FUZZ
@given(st.binary(max_size=400))
def test_recording_any_gzip_content(data):
    _check(gzip.compress(data))
    _check(gzip.compress(TEXT.split(b"\n", 1)[0] + b"\n" + data))  # a valid header, then anything


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(RECORDING) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_recording_flipped_bytes(flips):
    data = bytearray(RECORDING)
    for pos, mask in flips:
        data[pos] ^= mask
    _check(bytes(data))


@FUZZ
@given(st.integers(0, len(RECORDING)))
def test_recording_cut_anywhere(cut):
    _check(RECORDING[:cut])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=4), max_leaves=10)
LINE_KEYS = ["t", "c", "d", "ts", "o", "b", "fs", "n", "r", "pid", "tid", "comm", "cgroup", "netns", "laddr",
             "lport", "raddr", "rport", "role", "k", "v"]


@st.composite
def mutated_lines(draw) -> bytes:
    """A real recording's text with some lines replaced by lines whose fields hold anything."""
    lines = TEXT.split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(1, len(lines) - 1))
        obj = json.loads(lines[i]) if lines[i] else {}
        for key in draw(st.lists(st.sampled_from(LINE_KEYS), max_size=3)):
            obj[key] = draw(JSON_VALUES)
        lines[i] = json.dumps(obj).encode()
    return b"\n".join(lines)


@FUZZ
@given(mutated_lines())
def test_recording_lines_with_any_fields(text):
    _check(gzip.compress(text))
