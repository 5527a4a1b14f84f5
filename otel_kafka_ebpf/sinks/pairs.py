"""The `trace` sink: one line per Kafka request/response pair, JSON (`--json`) or compact text.

Used by `trace` (live) and `replay` (a recording) alike; topic ids are named through the
correlator's registry (Metadata seen on any connection).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TextIO

from ..capture.streams import ConnectionOpened, Role
from ..correlate.topics import TopicRegistry
from ..kafka.connection import HEADS_ONLY, IN_FLIGHT, UNSUPPORTED, KafkaPair

_NOT_DECODED = (UNSUPPORTED, HEADS_ONLY)  # on purpose: not an error of the pair
from ..kafka.primitives import uuid_text
from ..kafka.versions import API_KEYS_BY_NAME, API_VERSIONS, FETCH, METADATA, PRODUCE, api_name


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per request/response pair")
    parser.add_argument("--pid", type=int, action="append", metavar="PID",
                        help="only pairs of this process (repeatable)")
    parser.add_argument("--client-id", action="append", metavar="ID",
                        help="only pairs with this Kafka client id (repeatable)")
    parser.add_argument("--topic", action="append", metavar="TOPIC",
                        help="only pairs about this topic; Produce/Fetch keep only its partitions (repeatable)")
    parser.add_argument("--api", action="append", metavar="API", type=_api_key,
                        help="only this API, by name (produce, fetch, metadata, ...) or key number (repeatable)")
    parser.add_argument("--stats", action="store_true", help="print the decoder's counters to stderr at the end")
    parser.add_argument("--broker-traffic", action="store_true", default=None,
                        help="also show brokers' own connections (controller, replication), left out by default")


def _api_key(text: str) -> int:
    if text.isdigit():
        return int(text)
    key = API_KEYS_BY_NAME.get(text.lower().replace("-", "").replace("_", ""))
    if key is None:
        raise argparse.ArgumentTypeError(f"unknown Kafka API {text!r} (try produce, fetch, metadata, apiversions)")
    return key


class PairFormatter:
    """Turns decoded pairs into the printed records, with topic names and connection facts."""

    def __init__(self, topics: TopicRegistry, opened: dict[int, ConnectionOpened]) -> None:
        self.topics = topics
        self.opened = opened

    def topic_name(self, topic: str | None, topic_id: bytes | None) -> str | None:
        if topic is not None:
            return topic
        if topic_id is None:
            return None
        return self.topics.name(topic_id) or uuid_text(topic_id)

    def record(self, pair: KafkaPair) -> dict:
        conn = self.opened.get(pair.conn_id)
        server = None
        if conn is not None:
            if conn.role == Role.SERVER:
                server = f"{conn.local_addr}:{conn.local_port}"
            else:
                server = f"{conn.remote_addr}:{conn.remote_port}"
        rec = {
            "api": api_name(pair.api_key),
            "version": pair.api_version,
            "pid": conn.pid if conn else None,
            "comm": conn.comm if conn else None,
            "client_id": pair.client_id,
            "correlation_id": pair.correlation_id,
            "request_ns": pair.request_ts_ns,
            "response_ns": pair.response_ts_ns,
            "server": server,
        }
        if pair.request_error in _NOT_DECODED or pair.response_error in _NOT_DECODED:
            # an API (or version) whose bodies this agent does not decode, or a capture of heads only
            rec["decoded"] = False
        if pair.request_error and pair.request_error not in _NOT_DECODED:
            rec["request_error"] = pair.request_error
        if pair.response_error == IN_FLIGHT:
            rec["in_flight"] = True  # its response had not come when the capture stopped
        elif pair.response_error and pair.response_error not in _NOT_DECODED:
            rec["response_error"] = pair.response_error
        if pair.api_key == PRODUCE:
            rec["partitions"] = self._produce_partitions(pair)
        elif pair.api_key == FETCH:
            rec["partitions"] = self._fetch_partitions(pair)
        elif pair.api_key == API_VERSIONS and pair.request is not None:
            rec["client_software_name"] = pair.request.client_software_name
            rec["client_software_version"] = pair.request.client_software_version
        elif pair.api_key == METADATA and pair.response is not None:
            rec["topics"] = [t.name for t in pair.response.topics]
        return rec

    def _produce_partitions(self, pair: KafkaPair) -> list[dict]:
        results = {}
        if pair.response is not None:
            for p in pair.response.partitions:
                results[(p.topic_id or p.topic, p.partition)] = p
        out = []
        if pair.request is None:  # request not decoded: what the response says
            for p in results.values():
                out.append({"topic": self.topic_name(p.topic, p.topic_id), "partition": p.partition,
                            "base_offset": p.base_offset, "record_count": None, "error_code": p.error_code,
                            "first_timestamp": None, "max_timestamp": None})
            return out
        for p in pair.request.partitions:
            batches = p.batches
            result = results.get((p.topic_id or p.topic, p.partition))
            out.append({
                "topic": self.topic_name(p.topic, p.topic_id),
                "partition": p.partition,
                "base_offset": result.base_offset if result is not None else None,
                "record_count": sum(b.record_count for b in batches),
                "error_code": result.error_code if result is not None else None,
                "first_timestamp": min((b.first_timestamp for b in batches), default=None),
                "max_timestamp": max((b.max_timestamp for b in batches), default=None),
            })
        return out

    def _fetch_partitions(self, pair: KafkaPair) -> list[dict]:
        if pair.response is None:
            return []
        offsets = pair.fetch_offsets or {}
        out = []
        for p in pair.response.partitions:
            batches = []
            for b in p.batches:
                entry = {"base_offset": b.base_offset, "last_offset": b.last_offset, "record_count": b.record_count,
                         "first_timestamp": b.first_timestamp, "max_timestamp": b.max_timestamp}
                if b.is_control:
                    entry["control"] = True
                if b.partial:
                    entry["partial"] = True
                batches.append(entry)
            out.append({
                "topic": self.topic_name(p.topic, p.topic_id),
                "partition": p.partition,
                "fetch_offset": offsets.get((p.topic_id or p.topic, p.partition)),
                "high_watermark": p.high_watermark,
                "error_code": p.error_code,
                "batches": batches,
            })
        return out


class PairFilter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.pids = set(args.pid) if getattr(args, "pid", None) else None
        self.client_ids = set(args.client_id) if getattr(args, "client_id", None) else None
        self.topics = set(args.topic) if getattr(args, "topic", None) else None
        self.apis = set(args.api) if getattr(args, "api", None) else None

    def wants_pair(self, pair: KafkaPair, pid: int | None) -> bool:
        if self.apis is not None and pair.api_key not in self.apis:
            return False
        if self.client_ids is not None and pair.client_id not in self.client_ids:
            return False
        if self.pids is not None and pid not in self.pids:
            return False
        return True

    def narrow(self, rec: dict) -> dict | None:
        """Apply the topic filter to a formatted record; None drops it."""
        if self.topics is None:
            return rec
        if "partitions" in rec:
            kept = [p for p in rec["partitions"] if p["topic"] in self.topics]
            if not kept:
                return None
            rec["partitions"] = kept
            return rec
        if "topics" in rec and any(t in self.topics for t in rec["topics"]):
            return rec
        return None


def format_text(rec: dict) -> str:
    """One compact human-readable line."""
    ts = rec["request_ns"]
    clock = time.strftime("%H:%M:%S", time.localtime(ts / 1e9)) + f".{ts % 1_000_000_000 // 1000:06d}"
    latency = ""
    if rec["response_ns"] is not None:
        latency = f" {(rec['response_ns'] - ts) / 1e6:.3f}ms"
    who = f"{rec['pid']}/{rec['comm']}" if rec["pid"] is not None else "?"
    line = (f"{clock} {who} {rec['client_id'] or '-'} -> {rec['server'] or '?'} "
            f"{rec['api']} v{rec['version']} #{rec['correlation_id']}{latency}")
    req_err, resp_err = rec.get("request_error"), rec.get("response_error")
    if rec.get("decoded") is False:
        line += " (body not decoded)"
    if rec.get("in_flight"):
        line += " (response still awaited at stop)"
    if req_err or resp_err:
        line += f" [request {req_err or 'ok'}, response {resp_err or 'ok'}]"
    parts = []
    for p in rec.get("partitions", ()):
        if "batches" in p:
            n = sum(b["record_count"] for b in p["batches"])
            first = p["batches"][0]["base_offset"] if p["batches"] else None
            span = f" {n} rec from {first}" if n else ""
            parts.append(f"{p['topic']}[{p['partition']}]@{p['fetch_offset']} hw={p['high_watermark']}{span}"
                         + (f" err={p['error_code']}" if p["error_code"] else ""))
        else:
            parts.append(f"{p['topic']}[{p['partition']}]@{p['base_offset']}+{p['record_count']}"
                         + (f" err={p['error_code']}" if p["error_code"] else ""))
    if parts:
        line += " " + " ".join(parts)
    if rec.get("client_software_name"):
        line += f" {rec['client_software_name']}/{rec['client_software_version']}"
    return line


class PairPrinter:
    """The sink: filtered pairs as JSON lines or text lines on `out`."""

    def __init__(self, args: argparse.Namespace, out: TextIO, topics: TopicRegistry,
                 opened: dict[int, ConnectionOpened]) -> None:
        self.formatter = PairFormatter(topics, opened)
        self.wanted = PairFilter(args)
        self.as_json = bool(getattr(args, "json", False))
        self.out = out

    def pair(self, pair: KafkaPair, conn: ConnectionOpened | None) -> None:
        if not self.wanted.wants_pair(pair, conn.pid if conn else None):
            return
        rec = self.wanted.narrow(self.formatter.record(pair))
        if rec is None:
            return
        self.out.write((json.dumps(rec, separators=(",", ":")) if self.as_json else format_text(rec)) + "\n")

    def close(self) -> None:
        self.out.flush()
