"""Capture benchmark, full copy: a loopback client streaming Kafka-framed requests, agent detached vs attached.

Prints MB/s and events/s the agent captured with `--capture full` (whole frames: the copy path's
throughput; the digest's costs are in bench_agent.py, the cost to non-Kafka processes in
bench_syscall_cost.py), whether any were lost, and the client's slowdown as a ratio of the two runs,
measured in one process run. Results go to bench/results/capture.json.

The client is a child process that streams Kafka-shaped request frames to a loopback server (another
child process) that reads them all and answers once; the agent's own process takes no part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otel_kafka_ebpf.capture.loader import CaptureSettings  # noqa: E402
from tests.testbed.agent_capture import BackgroundCapture  # noqa: E402

FRAME_BODY = 16 * 1024  # bytes per request and per response body
ROUNDS = 20000

CLIENT = r"""
import socket, struct, sys, time
port, rounds, body, pace = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# a Produce v9 request header (api_key 0, version 9, correlation id, client id) then padding
hdr = struct.pack(">hhih", 0, 9, 0, 5) + b"bench"
frame = struct.pack(">i", body) + hdr + b"x" * (body - len(hdr))
t0 = time.perf_counter()
for i in range(rounds):
    if pace:
        ahead = t0 + i / pace - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    s.sendall(frame)
head = s.recv(4, socket.MSG_WAITALL)  # the server answers once it has read every frame
(size,) = struct.unpack(">i", head)
got = 0
while got < size:
    got += len(s.recv(min(65536, size - got)))
print(time.perf_counter() - t0)
"""

SERVER = r"""
import socket, struct, sys
body, rounds = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
frame_len = body + 4
left = rounds * frame_len
while left:
    chunk = conn.recv(min(left, 1 << 20))
    if not chunk:
        sys.exit(1)
    left -= len(chunk)
conn.sendall(struct.pack(">i", body) + struct.pack(">i", 0) + b"y" * (body - 4))
"""


def run_client(rounds: int = ROUNDS, pace: float = 0, on_port=None) -> float:
    """Client and server in child processes: the agent's own process takes no part in the exchange."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(FRAME_BODY), str(rounds)],
                              stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    if on_port:
        on_port(port)
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(rounds), str(FRAME_BODY), str(pace)],
                         capture_output=True, text=True, check=True)
    server.wait(30)
    return float(out.stdout.strip())


def median_of_3(fn) -> float:
    return sorted(fn() for _ in range(3))[1]


def captured_run(rounds: int, pace: float) -> dict:
    """One client run with the agent attached; what the agent captured of it."""
    captured = {"bytes": 0, "events": 0}
    port_box: list[int] = []
    bench_conns: set[int] = set()

    def consume(e) -> None:
        # count only the benchmark client's connection: other traffic on the host is captured too
        if port_box and getattr(e, "remote_port", None) == port_box[0]:
            bench_conns.add(e.conn_id)
        data = getattr(e, "data", None)
        if data is not None and e.conn_id in bench_conns:
            captured["bytes"] += len(data)
            captured["events"] += 1

    with BackgroundCapture(CaptureSettings(mode="full"), on_event=consume) as agent:
        seconds = run_client(rounds, pace, on_port=port_box.append)
        time.sleep(0.5)
    wire = (rounds + 1) * (FRAME_BODY + 4)
    return {"seconds": seconds, "bytes": captured["bytes"], "events": captured["events"],
            "drops": agent.counters.get("ringbuf_drops", 0), "loss_free": captured["bytes"] == wire,
            "mb_per_s": captured["bytes"] / seconds / 1e6, "events_per_s": captured["events"] / seconds}


def main() -> int:
    if os.geteuid() != 0:
        print("bench_capture: needs root to load the BPF program", file=sys.stderr)
        return 1
    run_client()  # warm-up
    off = median_of_3(run_client)
    runs = [captured_run(ROUNDS, 0) for _ in range(3)]
    on_run = sorted(runs, key=lambda r: r["seconds"])[1]
    on = on_run["seconds"]
    print(f"capture bench: a client streams {FRAME_BODY + 4} B Kafka-framed requests over loopback")
    print(f"  unpaced, {ROUNDS} frames (median of 3): client time agent off {off:.3f} s, on {on:.3f} s -> slowdown x{on / off:.3f}; "
          f"captured {on_run['mb_per_s']:.1f} MB/s, {on_run['events_per_s']:.0f} events/s, "
          f"loss-free {on_run['loss_free']} (ring-buffer drops {on_run['drops']})")
    best = None
    for pace in (32000, 16000, 8000, 4000, 2000):  # frames/s
        r = captured_run(pace * 2, pace)
        print(f"  paced {pace} frames/s ({pace * (FRAME_BODY + 4) / 1e6:.0f} MB/s offered): captured "
              f"{r['mb_per_s']:.1f} MB/s, {r['events_per_s']:.0f} events/s, loss-free {r['loss_free']}")
        if r["loss_free"]:
            best = {"pace_frames_per_s": pace, **r}
            break
    result = {
        "frame_bytes": FRAME_BODY + 4, "rounds_unpaced": ROUNDS,
        "client_seconds_agent_off": round(off, 3), "client_seconds_agent_on": round(on, 3),
        "slowdown_ratio": round(on / off, 3), "unpaced": on_run, "best_loss_free": best,
    }
    if best:
        print(f"  highest loss-free rate measured: {best['mb_per_s']:.1f} MB/s, {best['events_per_s']:.0f} events/s")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "capture.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
