"""Decoder hot-path benchmark on real frames: Produce and Fetch request/response pairs.

The frames come from the recorded vectors (tests/vectors): a Produce request and its response,
and a Fetch request and a Fetch response carrying batches, for a few partitions. They are
replayed through one `KafkaConnection` (frame split, headers, correlation, Produce/Fetch bodies,
batch headers; records are not decoded) with fresh correlation ids, one capture chunk per frame.

    .venv/bin/python bench/bench_decoder.py [--seconds 3] [--vector java-zstd-3p] [--out FILE]

Prints frames/s and MB/s per CPU second (one core) per workload and the ratio to the 50,000
frames/s target; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otel_kafka_ebpf.capture.streams import Direction, Role  # noqa: E402
from otel_kafka_ebpf.kafka import NEED_DATA, KafkaConnection  # noqa: E402
from otel_kafka_ebpf.kafka.apis import decode_request_body  # noqa: E402
from otel_kafka_ebpf.kafka.headers import read_request_header, read_response_correlation_id  # noqa: E402
from tests.unit.kafka import vectors  # noqa: E402

TARGET_FRAMES_PER_S = 50_000


def pick_frames(name: str) -> dict[str, tuple[bytes, bytes]]:
    """(request frame, response frame), size prefixes included, for Produce and for a Fetch with data."""
    streams = vectors.streams(name)
    chosen: dict[str, tuple[bytes, bytes, int]] = {}
    for (conn, direction), stream in streams.items():
        if direction != Direction.SEND:
            continue
        responses = {read_response_correlation_id(f): f for f in vectors.frames(streams.get((conn, Direction.RECV), b""))}
        for req in vectors.frames(stream):
            header, pos = read_request_header(req)
            resp = responses.get(header.correlation_id)
            if resp is None or header.api_key not in (0, 1):
                continue
            kind = "produce" if header.api_key == 0 else "fetch"
            if kind == "produce" and decode_request_body(0, header.api_version, req, pos).acks == 0:
                continue
            weight = len(resp) if kind == "fetch" else len(req)  # the one carrying batches
            if kind not in chosen or weight > chosen[kind][2]:
                chosen[kind] = (req, resp, weight)
    return {k: (_prefixed(r), _prefixed(s)) for k, (r, s, _) in chosen.items()}


def _prefixed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def with_correlation(req: bytes, resp: bytes, corr: int) -> tuple[bytes, bytes]:
    c = corr.to_bytes(4, "big")
    return req[:8] + c + req[12:], resp[:4] + c + resp[8:]


def build(kinds: list[tuple[bytes, bytes]], n: int) -> list[tuple[int, bytes]]:
    """n request/response exchanges cycling over `kinds`, as (direction, chunk) in capture order."""
    out = []
    for i in range(n):
        req, resp = with_correlation(*kinds[i % len(kinds)], i)
        out.append((Direction.SEND, req))
        out.append((Direction.RECV, resp))
    return out


def run(chunks: list[tuple[int, bytes]], seconds: float) -> dict:
    """Feed the chunks through fresh connections until `seconds` of CPU time were spent.

    Rates are per CPU second of this process (one core): the test machine is shared, and wall
    time would measure the neighbours too. Both are recorded.
    """
    frames = nbytes = pairs = 0
    cpu = wall = 0.0
    size = sum(len(d) for _, d in chunks)
    while cpu < seconds:
        conn = KafkaConnection(1, Role.CLIENT)
        offsets = [0, 0]
        c0, w0 = time.process_time(), time.perf_counter()
        for direction, data in chunks:
            conn.feed_data(direction, offsets[direction], data, 0)
            offsets[direction] += len(data)
            while conn.next_event() is not NEED_DATA:
                pairs += 1
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        frames += len(chunks)
        nbytes += size
    assert pairs * 2 == frames, "every exchange was paired"
    return {"frames": frames, "pairs": pairs, "bytes": nbytes, "cpu_seconds": cpu, "wall_seconds": wall,
            "frames_per_s": frames / cpu, "mb_per_s": nbytes / cpu / 1e6, "wall_frames_per_s": frames / wall,
            "mean_frame_bytes": nbytes / frames}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vector", default="java-zstd-3p", help="recorded vector to take frames from")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per workload")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_decoder.json"))
    args = parser.parse_args(argv)
    picked = pick_frames(args.vector)
    workloads = {
        "produce": [picked["produce"]],
        "fetch": [picked["fetch"]],
        "produce+fetch": [picked["produce"], picked["fetch"]],
    }
    results = {}
    print(f"frames from {args.vector}: produce request {len(picked['produce'][0])} B, "
          f"fetch response {len(picked['fetch'][1])} B")
    for label, kinds in workloads.items():
        r = run(build(kinds, 2000), args.seconds)
        results[label] = r
        print(f"{label:14s} {r['frames_per_s']:>10,.0f} frames/s {r['mb_per_s']:8.1f} MB/s per CPU second "
              f"({r['mean_frame_bytes']:.0f} B/frame)  x{r['frames_per_s'] / TARGET_FRAMES_PER_S:.2f} of target "
              f"{TARGET_FRAMES_PER_S:,} frames/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "decoder", "vector": args.vector, "python": platform.python_version(),
                               "machine": platform.machine(), "cpus": os.cpu_count(),
                               "target_frames_per_s": TARGET_FRAMES_PER_S, "results": results}, indent=1) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
