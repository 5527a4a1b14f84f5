"""The limits and enums of bpf/capture.h, as Python reads them: each defined once in C, mirrored once in
otel_kafka_ebpf/capture/events.py, and the two equal. A new kernel enum member without its mirror fails."""

from __future__ import annotations

import re
from pathlib import Path

from otel_kafka_ebpf.capture import events

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "capture.h"
# limits Python uses; the others (iovecs walked, detection attempts, ...) stay the kernel's own
MIRRORED_DEFINES = ("CHUNK_SIZE", "MAX_SKIPS", "COMM_LEN", "MAX_KAFKA_PORTS", "LAYOUT_OPS", "MAX_LAYOUTS", "MAX_DEPTH",
                    "INFLIGHT")
# enums whose every member Python must know: what the kernel writes into events
MIRRORED_ENUMS = ("oke_event_type", "oke_gap_flag", "oke_data_flag", "oke_skip_reason", "oke_capture_mode")


def _value(expr: str) -> int:
    expr = re.sub(r"/\*.*?\*/", "", expr).strip()
    assert re.fullmatch(r"[0-9x<() +]+", expr), expr  # numbers and shifts only: nothing to evaluate blindly
    return eval(expr, {"__builtins__": {}})  # noqa: S307 (checked above)


def _header() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    text = HEADER.read_text()
    defines = {m.group(1): _value(m.group(2)) for m in re.finditer(r"^#define OKE_(\w+)[ \t]+([0-9][^\n/]*)", text, re.M)}
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
