"""`otel-kafka-ebpf`: doctor, record, replay, trace.

Every failure a user can cause or meet (bad config, missing privilege, missing kernel feature,
unreadable recording) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Iterator, Sequence

from . import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _die(msg: str, code: int = EXIT_ERROR) -> int:
    print(f"otel-kafka-ebpf: {msg}", file=sys.stderr)
    return code


def _add_capture_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capture")
    g.add_argument("--config", help="TOML config file ([capture] table)")
    g.add_argument("--capture-pid", dest="capture_pids", type=int, action="append", metavar="PID",
                   help="capture only this process (repeatable)")
    g.add_argument("--cgroup", help="capture only this cgroup v2 directory (sidecar mode)")
    g.add_argument("--kafka-port", dest="kafka_ports", type=int, action="append", metavar="PORT",
                   help="treat connections on this port as Kafka without detection (repeatable)")
    g.add_argument("--ports-only", action="store_true", default=None,
                   help="capture only connections on --kafka-port ports")
    g.add_argument("--server-side", action="store_true", default=None,
                   help="also capture the broker side of connections (processes that accept())")
    g.add_argument("--frame-budget", type=int, help="bytes copied per Kafka frame (default 1 MiB)")
    g.add_argument("--ringbuf-mb", type=int, help="ring buffer size in MiB (default 64)")
    g.add_argument("--duration", type=float, help="stop after this many seconds")


def _capture_settings(args: argparse.Namespace):
    from .capture.loader import CaptureSettings
    from .config import load_config

    cfg = load_config(args.config, {
        "pids": args.capture_pids, "cgroup": args.cgroup, "kafka_ports": args.kafka_ports,
        "ports_only": args.ports_only, "server_side": args.server_side, "frame_budget": args.frame_budget, "ringbuf_mb": args.ringbuf_mb,
    }).capture
    return CaptureSettings(frame_budget=cfg.frame_budget, ringbuf_bytes=cfg.ringbuf_mb << 20,
                           pids=set(cfg.pids), cgroup_path=cfg.cgroup, kafka_ports=tuple(cfg.kafka_ports),
                           ports_only=cfg.ports_only, server_side=cfg.server_side)


def _preflight() -> str | None:
    """The one-line reason the live capture cannot start, if any (doctor has the details)."""
    from .doctor import check_btf, check_kernel_version, check_privileges

    for check in (check_privileges, check_btf, check_kernel_version):
        r = check()
        if not r.ok:
            return f"{r.name}: {r.detail} -> {r.fix} (run `otel-kafka-ebpf doctor` for all checks)"
    return None


def _live(args: argparse.Namespace, on_ready=None):
    from .capture.live import LiveCapture

    settings = _capture_settings(args)
    problem = _preflight()
    if problem:
        raise _UserError(problem)
    return LiveCapture(settings, duration_s=args.duration, on_ready=on_ready)


class _UserError(Exception):
    pass


@contextlib.contextmanager
def _stop_on_signals(live) -> Iterator[None]:
    """Ctrl-C and SIGTERM end a live capture cleanly: they set the capture's stop flag.

    A KeyboardInterrupt would be raised wherever the main thread happens to be, often inside the ring
    buffer callback that libbpf calls from C, where Python can only print it and drop it. A flag is
    seen by the poll loop within one poll interval, and everything already captured is still drained.
    """
    def stop(_signum, _frame) -> None:
        live.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report_counters(live, out=sys.stderr) -> None:
    c = live.counters
    s = live.assembler.stats
    if not c:
        return
    print(f"otel-kafka-ebpf: captured {c.get('bytes', 0)} bytes in {c.get('events', 0)} events on "
          f"{c.get('conn_kafka', 0)} Kafka connections; lost {c.get('ringbuf_drops', 0)} events to a full ring "
          f"buffer; {s.gaps} gaps ({s.gap_bytes} bytes not captured)"
          + (f"; {c['undecoded_at_stop']} events queued at stop not decoded" if c.get("undecoded_at_stop") else ""),
          file=out)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(sys.stdout)


def cmd_record(args: argparse.Namespace) -> int:
    from .capture.recording import RecordingWriter

    live = _live(args, on_ready=lambda: print(f"otel-kafka-ebpf: recording to {args.out} (Ctrl-C stops)",
                                             file=sys.stderr, flush=True))
    try:
        writer = RecordingWriter(args.out, source="live")
    except OSError as exc:
        raise _UserError(f"{args.out}: {exc.strerror}") from None
    with writer, _stop_on_signals(live):
        for event in live:
            writer.write(event)
    _report_counters(live)
    print(f"otel-kafka-ebpf: wrote {writer.events} stream events to {args.out}", file=sys.stderr)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from .capture.recording import read_header, read_recording
    from .trace import run_trace

    read_header(args.file)  # a bad file fails here with one line, before any output
    return run_trace(read_recording(args.file), args, sys.stdout)


def cmd_trace(args: argparse.Namespace) -> int:
    from .trace import run_trace

    live = _live(args, on_ready=lambda: print("otel-kafka-ebpf: tracing Kafka traffic (Ctrl-C stops)",
                                             file=sys.stderr, flush=True))
    try:
        with _stop_on_signals(live):
            return run_trace(iter(live), args, sys.stdout)
    finally:
        _report_counters(live)


def build_parser() -> argparse.ArgumentParser:
    from .trace import add_trace_arguments

    parser = argparse.ArgumentParser(prog="otel-kafka-ebpf",
                                     description="Kafka client latency and lag from eBPF, over OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check that this host can run the agent")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("record", help="capture Kafka traffic into a recording file")
    p.add_argument("--out", required=True, help="recording file to write")
    _add_capture_arguments(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="decode a recording, as `trace` does live")
    p.add_argument("file", help="recording file")
    add_trace_arguments(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("trace", help="print Kafka request/response pairs live")
    _add_capture_arguments(p)
    add_trace_arguments(p)
    p.set_defaults(func=cmd_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .capture.libbpf import LibbpfError
    from .capture.loader import CaptureError
    from .capture.recording import RecordingError
    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # a closed pipe (`| head`) ends the output quietly
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.func(args)
    except (ConfigError, CaptureError, RecordingError, LibbpfError, _UserError) as exc:
        return _die(str(exc))
    except KeyboardInterrupt:
        return 130
    except PermissionError as exc:
        return _die(f"{exc.filename or ''}: permission denied; run as root or see `otel-kafka-ebpf doctor`")


if __name__ == "__main__":
    sys.exit(main())
