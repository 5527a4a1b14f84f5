"""One entry of the kernel matrix (tests/kernels/matrix.py), inside a QEMU guest or on the host itself:
the agent's own load path on this kernel, then a little real Kafka-framed traffic, seen through it.

    python tests/kernels/guest.py [--modes digest,full,heads] [--result FILE]

For each mode: `CaptureProgram(CaptureSettings(mode=mode))` with the mode's default ring buffer, as the
agent opens it; whether it loaded (else the loader's one-line reason), which syscall exit program it
runs, the verifier's statistics and the load time. Then bench/loadgen (a Kafka-framed client and
server on loopback, another process: the agent leaves its own out) replays a Produce and a Fetch
exchange recorded from the Java client; the capture's events must show that client connection and
every byte it moved, and decode to one pair per request; beside them, the kernel's own byte counts
(its close event) and the runs of the programs it skipped (recursion_misses: syscalls never seen).
Prints one line: MARKER and a JSON object.
"""

from __future__ import annotations


def _uptime() -> float:
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


UPTIME_AT_START = _uptime()  # before the imports: a guest's boot, up to its Python

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from otel_kafka_ebpf.capture.events import CloseEvent, ExitEvent  # noqa: E402
from otel_kafka_ebpf.capture.loader import MODES, CaptureError, CaptureProgram, CaptureSettings  # noqa: E402
from otel_kafka_ebpf.capture.reassembly import StreamAssembler  # noqa: E402
from otel_kafka_ebpf.capture.streams import ConnectionOpened, StreamData, StreamGap  # noqa: E402
from otel_kafka_ebpf.kafka import KafkaStreamDecoder  # noqa: E402
from otel_kafka_ebpf.kafka.connection import HEADS_ONLY  # noqa: E402

MARKER = "OKE-KERNEL-RESULT "  # tests/kernels/matrix.py looks for it
LOADGEN = ROOT / "bench" / ".output" / "loadgen"
VECTOR = "java-plain"  # the recorded Java client traffic the exchanges come from
RATE, SECONDS = 100, 1  # requests a second, for how long: a few hundred KiB each way
SETTLE_S = 20.0  # at most this long to read the ring empty after loadgen exits


def kernel_facts() -> dict:
    facts = {"release": os.uname().release, "btf": os.path.exists("/sys/kernel/btf/vmlinux")}
    try:
        facts["proc_version"] = Path("/proc/version").read_text().strip()
    except OSError:
        pass
    return facts


def exchanges() -> dict[str, tuple[bytes, bytes]]:
    from bench_decoder import pick_frames
    return pick_frames(VECTOR)


def feed_traffic(prog: CaptureProgram, events: list, req: bytes, resp: bytes, tmp: Path) -> dict:
    """loadgen replays (req, resp) for SECONDS; what the capture made of its client connection."""
    (tmp / "req.bin").write_bytes(req)
    (tmp / "resp.bin").write_bytes(resp)
    first = len(events)
    missed_before = recursion_misses()
    started = time.monotonic()
    lg = subprocess.Popen([str(LOADGEN), str(tmp / "req.bin"), str(tmp / "resp.bin"), str(RATE), str(SECONDS), "16"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = lg.pid  # the client's: the server is a child it forks
    stdout, stderr = lg.communicate(timeout=120)
    if lg.returncode != 0:
        return {"error": f"loadgen exited with {lg.returncode}: {stderr.strip()}"}
    requests = int(stdout.split()[0])
    # loadgen has exited: every event of its syscalls is in the ring already, so read it empty
    deadline = time.monotonic() + SETTLE_S
    while prog.poll(50) and time.monotonic() < deadline:
        pass
    missed = recursion_misses() - missed_before
    seconds = time.monotonic() - started
    assembler = StreamAssembler()
    decoder = KafkaStreamDecoder()
    mine: set[int] = set()
    captured, lost, opened = [0, 0], [0, 0], []
    lost_by_reason: dict[str, int] = {}
    lost_ranges: tuple[list, list] = ([], [])
    pairs = answered = 0
    ends = []  # the kernel's own word on how the connection ended
    for raw in events[first:]:
        if isinstance(raw, CloseEvent) and raw.conn_id in mine:
            ends.append({"close": raw.conn_id, "send_bytes": raw.send_bytes, "recv_bytes": raw.recv_bytes})
        elif isinstance(raw, ExitEvent) and raw.pid == pid:
            ends.append({"exit": raw.pid})
        for se in assembler.feed(raw):
            if isinstance(se, ConnectionOpened):
                if se.pid == pid:  # its client end (the server's end is another process, not traced)
                    mine.add(se.conn_id)
                    opened.append({"conn_id": se.conn_id, "role": se.role.name, "local_port": se.local_port,
                                   "remote_port": se.remote_port, "comm": se.comm})
            if getattr(se, "conn_id", None) not in mine:
                continue
            if isinstance(se, StreamData):
                captured[se.direction] += se.wire_length
            elif isinstance(se, StreamGap):
                if se.reason.is_loss and se.length:
                    lost[se.direction] += se.length
                    lost_ranges[se.direction].append((se.offset, se.length))
                    lost_by_reason[se.reason.name] = lost_by_reason.get(se.reason.name, 0) + se.length
                else:
                    captured[se.direction] += se.length
            for pair in decoder.feed(se):
                pairs += 1
                # a response frame matched: decoded, or (heads program) its body left in the kernel
                answered += pair.response_ts_ns is not None and pair.response_error in (None, HEADS_ONLY)
    for pair in decoder.finish():
        pairs += 1
    requests_hit, responses_hit = _frames_hit(lost_ranges[0], len(req)), _frames_hit(lost_ranges[1], len(resp))
    return {"requests": requests, "expected": [requests * len(req), requests * len(resp)], "captured": captured,
            "lost_bytes": sum(lost), "lost": lost, "lost_by_reason": lost_by_reason, "connections": opened, "pairs": pairs, "answered_pairs": answered,
            "seconds": round(seconds, 3), "loadgen_pid": pid, "recursion_misses": missed, "ends": ends,
            "lost_requests": len(requests_hit), "lost_responses": len(responses_hit),
            # exchange i is request frame i and response frame i: those a loss touched at all, and those
            # whose head (a request's size, key, version and correlation id; a response's size and
            # correlation id) it took, which no decoder can answer
            "exchanges_touched": len(requests_hit | responses_hit),
            "exchanges_headless": len(_frames_hit(lost_ranges[0], len(req), REQUEST_HEAD)
                                      | _frames_hit(lost_ranges[1], len(resp), RESPONSE_HEAD)),
            "loss_ranges": [len(lost_ranges[0]), len(lost_ranges[1])]}


REQUEST_HEAD, RESPONSE_HEAD = 12, 8


def _frames_hit(ranges: list[tuple[int, int]], frame: int, head: int | None = None) -> set[int]:
    """Frames of `frame` bytes each, back to back from offset 0, that a loss in `ranges` touches (with
    `head`: whose first `head` bytes it touches)."""
    hit: set[int] = set()
    for offset, length in ranges:
        for i in range(offset // frame, (offset + length - 1) // frame + 1):
            if head is None or offset < i * frame + head:
                hit.add(i)
    return hit


def loaded_facts(prog: CaptureProgram, started: float) -> dict:
    return {"loaded": True, "open_seconds": round(time.monotonic() - started, 4),
            "load_seconds": round(prog.load_seconds, 4), "attached": prog.attached,
            "program": getattr(prog, "program", None), "degraded": bool(getattr(prog, "degraded", False)),
            "refusal": str(prog.refusal) if getattr(prog, "refusal", None) else None,
            "verifier": {name: {"insns": s.insns, "usec": s.usec, "stack": s.stack}
                         for name, s in prog.verifier_stats.items()}}


def recursion_misses() -> int:
    """Runs of this process's BPF programs the kernel skipped because the program was already running
    on that CPU (preempted mid-run, then entered again by another task): syscalls the capture never saw."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                for line in fh:
                    if line.startswith("recursion_misses:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


_STATS_LINES = ("processed ", "verification time", "stack depth")


def verifier_says(prog: CaptureProgram) -> dict[str, str]:
    """After a refusal: each program's last verifier log line before the statistics, read from the
    loader's log buffers, so a failure shows the kernel's words even when the loader's message lacks them."""
    out = {}
    for name, buf in getattr(prog, "_logs", {}).items():
        lines = [line.strip() for line in buf.value.decode(errors="replace").splitlines() if line.strip()]
        said = [line for line in lines if not line.startswith(_STATS_LINES)]
        if said:
            out[name] = said[-1]
    return out


def heads_alone(mode: str) -> dict:
    """When the agent could not start at all: would the fallback program (walker = heads) have loaded?"""
    if "walker" not in CaptureSettings.__dataclass_fields__:
        return {"loaded": False, "error": "this loader has no heads program"}
    prog = CaptureProgram(CaptureSettings(mode=mode, walker="heads"), on_event=lambda e: None)
    started = time.monotonic()
    try:
        prog.open()
    except CaptureError as exc:
        return {"loaded": False, "error": str(exc), "verifier_says": verifier_says(prog)}
    try:
        return loaded_facts(prog, started)
    finally:
        prog.close()


def run_mode(mode: str, frames: dict[str, tuple[bytes, bytes]]) -> dict:
    """The agent's load path in `mode`, then the traffic through it."""
    out: dict = {"mode": mode, "loaded": False}
    events: list = []
    # "heads": the fallback a kernel that refuses the walker gets, loaded on purpose (digest settings)
    settings = CaptureSettings(mode="digest", walker="heads") if mode == "heads" else CaptureSettings(mode=mode)
    prog = CaptureProgram(settings, on_event=events.append)
    out["ringbuf_bytes"] = prog.ringbuf_bytes
    started = time.monotonic()
    try:
        prog.open()
    except CaptureError as exc:
        out["error"] = str(exc)
        out["verifier_says"] = verifier_says(prog)
        out["heads_alone"] = heads_alone(mode)
        return out
    try:
        out.update(loaded_facts(prog, started))
        with tempfile.TemporaryDirectory(prefix="oke-guest-") as tmp:
            out["traffic"] = {kind: feed_traffic(prog, events, req, resp, Path(tmp))
                              for kind, (req, resp) in sorted(frames.items())}
        out["counters"] = prog.counters()
    except Exception as exc:  # a failure after loading is a result too
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=5)
    finally:
        prog.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default=",".join((*MODES, "heads")))
    ap.add_argument("--result", default="-", help="where the result line goes (-: stdout)")
    args = ap.parse_args()
    result: dict = {"kernel": kernel_facts(), "uptime_at_start": UPTIME_AT_START, "modes": {}}
    try:
        if not LOADGEN.exists():
            raise RuntimeError(f"{LOADGEN} is missing: run `make loadgen`")
        frames = exchanges()
        for mode in args.modes.split(","):
            result["modes"][mode] = run_mode(mode, frames)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=5)
    result["uptime_at_end"] = _uptime()
    line = MARKER + json.dumps(result) + "\n"
    if args.result == "-":
        sys.stdout.write(line)
        sys.stdout.flush()
    else:
        with open(args.result, "w") as fh:
            fh.write(line)
        sys.stdout.write(line)  # and on the console, for a reader of its log
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
