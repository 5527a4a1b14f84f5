"""The compiled core against its oracle, the Python decoder, on the load of bench_agent.py, stage by stage.

    .venv/bin/python bench/bench_core.py [--requests 50000] [--vector java-plain] [--digest]

The load is bench_agent's: a recorded Produce request and its response (tests/vectors, as bench/loadgen.c
sends them), with fresh correlation ids, each frame one ring record (struct oke_data_event) as the kernel
writes it; --digest: the Produce request as the digest capture sends it (records skipped). Each run goes
through the stages of the agent after the ring read: ring records -> stream events (StreamAssembler), events
-> pairs (the decoder: Python or core), pairs -> batches (Correlator.on_pair). Prints CPU µs per request per
stage and each stage's share, for both decoders, and the ratio; writes bench/results/core.json. No root, no
kernel: the ring read itself (RingBuffer.read) is measured by bench_agent.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_agent import _cpu_model  # noqa: E402
from bench_decoder import pick_frames, with_correlation  # noqa: E402
from otel_kafka_ebpf import fastpath  # noqa: E402
from otel_kafka_ebpf.capture import events as ev  # noqa: E402
from otel_kafka_ebpf.capture import layouts  # noqa: E402
from otel_kafka_ebpf.capture.loader import DATA_HEADER  # noqa: E402
from otel_kafka_ebpf.capture.reassembly import StreamAssembler  # noqa: E402
from otel_kafka_ebpf.capture.streams import ConnectionOpened, Direction, Role, StreamData  # noqa: E402
from otel_kafka_ebpf.correlate.batches import Correlator  # noqa: E402
from otel_kafka_ebpf.kafka import KafkaStreamDecoder  # noqa: E402

CONN = 42


def ring_records(req: bytes, resp: bytes, n: int, digest: bool) -> list[bytes]:
    """n exchanges as the ring holds them: one data record per frame, stream offsets in step."""
    skips = ()
    if digest:  # the request as the digest capture copies it: batch headers, records skipped
        opened = ConnectionOpened(CONN, 0, 1, 1, "bench", 0, 0, "127.0.0.1", 1, "127.0.0.1", 9092, Role.CLIENT)
        out = list(layouts.digest_streams([opened, StreamData(CONN, Direction.SEND, 0, 0, req)], "digest", 0,
                                          fused=True))
        data = next(e for e in out if type(e) is StreamData)
        req_copied, skips = bytes(data.data), data.skips
    else:
        req_copied = req
    skipped = sum(n for _, n in skips)
    table = b"".join(int(a).to_bytes(4, "little") + int(b).to_bytes(4, "little") for a, b in skips)
    out = []
    offsets = [0, 0]
    ts = 1_000_000
    for i in range(n):
        r, s = with_correlation(req, resp, i)
        r = req_copied[:8] + r[8:12] + req_copied[12:]
        for direction, data, extra, tail in ((0, r, skipped, table), (1, s, 0, b"")):
            flags = ev.DATA_FRAME_START
            out.append(DATA_HEADER.pack(ev.EV_DATA, len(data), CONN, ts, offsets[direction], 1, 1, direction, 0,
                                        flags, len(skips) if direction == 0 else 0,
                                        ev.SKIP_RECORDS if direction == 0 and skips else 0, 0, ts) + data + tail)
            offsets[direction] += len(data) + extra
            ts += 1000
    return out


def run(records: list[bytes], decoder_kind: str) -> dict:
    assembler = StreamAssembler(clock_offset_ns=0)
    decoder = KafkaStreamDecoder() if decoder_kind == "python" else fastpath.CoreStreamDecoder()
    correlator = Correlator(connections=decoder.opened)
    opened = ConnectionOpened(CONN, 0, 1, 1, "bench", 0, 0, "127.0.0.1", 40000, "127.0.0.1", 9092, Role.CLIENT)
    assembler._open(ev.OpenEvent(type=ev.EV_OPEN, pid=1, tid=1, family=2, role=1, conn_id=CONN, ts_ns=0))
    decoder.feed(opened)
    clock = time.process_time
    t0 = clock()
    events = []
    for raw in records:
        events.extend(assembler.feed_data_record(raw))
    t1 = clock()
    pairs = []
    feed = decoder.feed
    for e in events:
        pairs.extend(feed(e))
    t2 = clock()
    on_pair = correlator.on_pair
    for p in pairs:
        on_pair(p)
    t3 = clock()
    n = len(records) // 2
    answered = sum(p.response is not None for p in pairs)
    assert answered == n, (answered, n)
    stages = {"ring records -> stream events": t1 - t0, "decoder -> pairs": t2 - t1, "correlation (on_pair)": t3 - t2}
    total = sum(stages.values())
    return {"decoder": decoder_kind, "requests": n, "us_per_request": total / n * 1e6,
            "stages_us": {k: v / n * 1e6 for k, v in stages.items()},
            "stages_share": {k: v / total for k, v in stages.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--vector", default="java-plain")
    ap.add_argument("--digest", action="store_true", help="requests as the digest capture sends them")
    ap.add_argument("--rounds", type=int, default=3, help="best of")
    args = ap.parse_args()
    if fastpath._core is None:
        print(f"bench_core: {fastpath.CORE_MISSING}", file=sys.stderr)
        return 1
    req, resp = pick_frames(args.vector)["produce"]
    records = ring_records(req, resp, args.requests, args.digest)
    results = {"machine": {"cpu": _cpu_model(), "python": platform.python_version()}, "vector": args.vector,
               "digest": args.digest, "request_bytes": len(req), "response_bytes": len(resp)}
    for kind in ("python", "core"):
        best = min((run(records, kind) for _ in range(args.rounds)), key=lambda r: r["us_per_request"])
        results[kind] = best
    print(f"{args.requests:,} Produce exchanges ({len(req)} B requests{', digest' if args.digest else ''}, "
          f"{len(resp)} B responses, {args.vector}), CPU per request, best of {args.rounds}:")
    for kind in ("python", "core"):
        r = results[kind]
        stages = ", ".join(f"{k} {v:.2f} us ({r['stages_share'][k] * 100:.0f}%)" for k, v in r["stages_us"].items())
        print(f"  {kind:6}: {r['us_per_request']:6.2f} us per request = {stages}")
    p, c = results["python"], results["core"]
    key = "decoder -> pairs"
    results["ratio_decoder"] = p["stages_us"][key] / c["stages_us"][key]
    results["ratio_total"] = p["us_per_request"] / c["us_per_request"]
    print(f"  core vs python: decoder x{results['ratio_decoder']:.1f} faster, these stages together "
          f"x{results['ratio_total']:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"core{'-digest' if args.digest else ''}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
