"""The `console` exporter: OTLP requests as short readable lines (for a look, not for machines)."""

from __future__ import annotations

import time
from collections.abc import Iterator


def _attrs(items: list[dict] | None) -> dict[str, object]:
    out = {}
    for kv in items or ():
        value = kv.get("value", {})
        out[kv["key"]] = next(iter(value.values()), None) if value else None
    return out


def _clock(ns: str | int) -> str:
    ns = int(ns)
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) + f".{ns % 1_000_000_000 // 1_000_000:03d}"


def describe_request(signal: str, request: dict) -> Iterator[str]:
    if signal == "traces":
        for rs in request.get("resourceSpans", ()):
            service = _attrs(rs.get("resource", {}).get("attributes")).get("service.name", "?")
            for ss in rs.get("scopeSpans", ()):
                for s in ss.get("spans", ()):
                    a = _attrs(s.get("attributes"))
                    dur = (int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])) / 1e6
                    err = f" error={a['error.type']}" if "error.type" in a else ""
                    group = f" group={a['messaging.consumer.group.name']}" if "messaging.consumer.group.name" in a else ""
                    yield (f"{_clock(s['startTimeUnixNano'])} span {s['name']} [{a.get('messaging.destination.partition.id')}]"
                           f"@{a.get('messaging.kafka.offset', '-')}+{a.get('messaging.batch.message_count')} "
                           f"{service} client={a.get('messaging.client.id')}{group} {dur:.3f}ms "
                           f"trace={s['traceId']}{err}")
    elif signal == "metrics":
        for rm in request.get("resourceMetrics", ()):
            service = _attrs(rm.get("resource", {}).get("attributes")).get("service.name", "?")
            for sm in rm.get("scopeMetrics", ()):
                for m in sm.get("metrics", ()):
                    for kind in ("gauge", "sum", "histogram"):
                        for p in m.get(kind, {}).get("dataPoints", ()):
                            value = p.get("asDouble", p.get("asInt", None))
                            if kind == "histogram":
                                count = int(p.get("count", 0))
                                value = f"count={count} sum={p.get('sum', 0):.6g}"
                            labels = ",".join(f"{k}={v}" for k, v in _attrs(p.get("attributes")).items())
                            yield f"metric {m['name']}{{{labels}}} {value} ({service})"
    elif signal == "logs":
        for rl in request.get("resourceLogs", ()):
            service = _attrs(rl.get("resource", {}).get("attributes")).get("service.name", "?")
            for sl in rl.get("scopeLogs", ()):
                for r in sl.get("logRecords", ()):
                    body = next(iter(r.get("body", {}).values()), "")
                    yield f"{_clock(r.get('timeUnixNano', 0))} log {r.get('severityText', '')} {body} ({service})"
