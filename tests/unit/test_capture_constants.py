"""The limits, map sizes and enums of bpf/capture.h, as Python reads them: each defined once in C, mirrored once in
otel_kafka_ebpf/capture/events.py, and the two equal. A new kernel enum member without its mirror fails, and so does
a map sized by a bare number or an object whose maps are not the sizes the header says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otel_kafka_ebpf.capture import events
from otel_kafka_ebpf.capture.libbpf import lib
from otel_kafka_ebpf.capture.loader import object_path

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "bpf" / "capture.h"
# limits Python uses; the others (iovecs walked, detection attempts, most map sizes...) stay the kernel's own
MIRRORED_DEFINES = ("CHUNK_SIZE", "MAX_SKIPS", "COMM_LEN", "MAX_KAFKA_PORTS", "LAYOUT_OPS", "MAX_LAYOUTS", "MAX_DEPTH",
                    "INFLIGHT", "RINGBUF_BYTES", "MAX_PIDS", "MAX_TLS_FILES", "TLS_COOKIE_EX")
# enums whose every member Python must know: what the kernel writes into events
MIRRORED_ENUMS = ("oke_event_type", "oke_gap_flag", "oke_data_flag", "oke_skip_reason", "oke_capture_mode",
                  "oke_tls_stack")


def _value(expr: str) -> int:
    expr = re.sub(r"/\*.*?\*/", "", expr).strip()
    assert re.fullmatch(r"[0-9x<() +]+", expr), expr  # numbers and shifts only: nothing to evaluate blindly
    return eval(expr, {"__builtins__": {}})  # noqa: S307 (checked above)


def _header() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    text = HEADER.read_text()
    defines = {m.group(1): _value(m.group(2)) for m in re.finditer(r"^#define OKE_(\w+)[ \t]+([0-9(][^\n/]*)", text, re.M)}
    enums = {}
    for m in re.finditer(r"enum (\w+) \{(.*?)\};", text, re.S):
        members, nxt = {}, 0
        for line in re.sub(r"/\*.*?\*/", "", m.group(2), flags=re.S).split(","):
            line = line.strip()
            if not line:
                continue
            name, _, expr = line.partition("=")
            nxt = _value(expr) if expr else nxt
            members[name.strip().removeprefix("OKE_")] = nxt
            nxt += 1
        enums[m.group(1)] = members
    return defines, enums


def test_limits_agree():
    defines, _ = _header()
    for name in MIRRORED_DEFINES:
        assert name in defines, f"OKE_{name} is not in capture.h"
        assert getattr(events, name) == defines[name], f"{name}: Python {getattr(events, name)}, C {defines[name]}"


def test_every_enum_member_the_kernel_writes_has_its_mirror():
    _, enums = _header()
    for enum in MIRRORED_ENUMS:
        assert enums.get(enum), f"enum {enum} is not in capture.h"
        for name, value in enums[enum].items():
            assert getattr(events, name, None) == value, f"{enum} {name} = {value}: Python has {getattr(events, name, None)}"


def test_counters_in_the_kernel_s_order():
    _, enums = _header()
    kernel = [name.removeprefix("CNT_").lower() for name, v in sorted(enums["oke_counter"].items(), key=lambda kv: kv[1])
              if name != "CNT_MAX"]
    assert list(events.COUNTERS) == kernel


def test_each_mirrored_limit_is_defined_once_on_each_side():
    """One #define in bpf/, one assignment in the package (events.py): any other module takes it from there."""
    c_sources = [p.read_text() for p in sorted((ROOT / "bpf").glob("*.h")) + sorted((ROOT / "bpf").glob("*.bpf.c"))]
    py_sources = {p: p.read_text() for p in sorted((ROOT / "otel_kafka_ebpf").rglob("*.py"))}
    for name in MIRRORED_DEFINES:
        assert sum(len(re.findall(rf"^#define OKE_{name}\b", text, re.M)) for text in c_sources) == 1, name
        where = [p.name for p, text in py_sources.items() for _ in re.finditer(rf"^{name} = ", text, re.M)]
        assert where == ["events.py"], f"{name} assigned in {where}"


def _maps_in_sources() -> dict[str, str]:
    """map name -> the max_entries its definition in bpf/ gives, as written."""
    out = {}
    for path in sorted((ROOT / "bpf").glob("*.h")) + sorted((ROOT / "bpf").glob("*.bpf.c")):
        for m in re.finditer(r"struct \{([^{}]*)\} (\w+) SEC\(\"\.maps\"\);", path.read_text()):
            size = re.search(r"__uint\(max_entries, ([^)]+)\)", m.group(1))
            assert size, f"map {m.group(2)} ({path.name}) has no max_entries"
            out[m.group(2)] = size.group(1).strip()
    return out


def test_every_map_is_sized_by_a_named_limit():
    """No bare number: each size is a limit of capture.h (one entry, for a map that holds one value, is no limit)."""
    defines, enums = _header()
    named = set(defines) | {member for members in enums.values() for member in members}
    maps = _maps_in_sources()
    assert {"conns", "events", "pending", "pid_filter", "layouts"} <= set(maps)
    for name, size in maps.items():
        assert size == "1" or (size.startswith("OKE_") and size.removeprefix("OKE_") in named), f"{name}: {size}"


@pytest.fixture(scope="module")
def opened():
    L = lib()
    obj = L.bpf_object__open_file(str(object_path("capture")).encode(), None)
    yield obj
    L.bpf_object__close(obj)


def test_the_object_s_maps_have_the_sizes_the_header_says(opened):
    """The built object agrees with the sources (a stale object fails here, not in the kernel)."""
    defines, enums = _header()
    values = dict(defines)
    for members in enums.values():
        values.update(members)
    L = lib()
    for name, size in _maps_in_sources().items():
        expected = 1 if size == "1" else values[size.removeprefix("OKE_")]
        found = L.bpf_map__max_entries(L.bpf_object__find_map_by_name(opened, name.encode()))
        assert found == expected, f"map {name}: {found} entries in the object, {size} = {expected} in the sources"
