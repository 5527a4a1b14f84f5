"""`otel-kafka-ebpf`: doctor, record, replay, trace, run.

Every failure a user can cause or meet (a bad flag, setting or environment variable, a missing
privilege or kernel feature, an unreadable recording) ends as one line on stderr and a non-zero
exit, never a traceback. Exit codes: 0 done; 1 an error (the line says which); 2 a command line
not understood; 3 `replay` of a damaged recording (everything readable was replayed; the line says
where the damage is); 70 an internal error (one line; `--debug` shows the traceback); 130
interrupted before the capture started.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from typing import Iterator, Sequence

from . import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGED, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 70, 130


def _die(msg: str, code: int = EXIT_ERROR) -> int:
    print(f"otel-kafka-ebpf: {msg}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """A command line it does not understand is one line (argparse prints the whole usage)."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        self.exit(EXIT_USAGE, f"otel-kafka-ebpf: {command + ': ' if command else ''}{message} "
                              f"(see `{self.prog} --help`)\n")


def _above_zero(what: str):
    """An argument type: a finite number above zero (`what` names it in the error)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} above 0")
        return value
    return parse


_seconds = _above_zero("a number of seconds")


def _add_capture_arguments(p: argparse.ArgumentParser) -> None:
    from .capture.loader import DEFAULT_FRAME_BUDGET, DEFAULT_RINGBUF_BYTES

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
    g.add_argument("--capture", dest="capture_mode", choices=("digest", "full"),
                   help="digest (default): record batch headers, records stay in the kernel; "
                        "full: whole frames under --frame-budget")
    g.add_argument("--record-prefix", type=int, metavar="BYTES",
                   help="digest: also copy this many record bytes after each uncompressed batch header "
                        "(record headers such as traceparent; message contents too) - default 0")
    g.add_argument("--frame-budget", type=int, help="bytes copied per Kafka frame without a digest "
                                                    f"(default {DEFAULT_FRAME_BUDGET >> 20} MiB)")
    g.add_argument("--ringbuf-mb", type=int, help="ring buffer size in MiB (default "
                                                  f"{DEFAULT_RINGBUF_BYTES['digest'] >> 20} digest, "
                                                  f"{DEFAULT_RINGBUF_BYTES['full'] >> 20} full)")
    g.add_argument("--duration", type=_seconds, help="stop after this many seconds")


def _add_export_arguments(p: argparse.ArgumentParser, *, replay: bool = False) -> None:
    g = p.add_argument_group("export (also [exporter] in --config, OTEL_EXPORTER_OTLP_* and OKE_EXPORTER_*)")
    if replay:
        g.add_argument("--config", help="TOML config file ([exporter], [spans], [agent] tables)")
    g.add_argument("--exporter", choices=("otlp", "otlp-http", "file", "console", "none"),
                   help="otlp = OTLP/gRPC (default), otlp-http, file (OTLP JSON lines), console, none"
                        + ("; given, the recording's telemetry is exported instead of its pairs printed" if replay
                           else ""))
    g.add_argument("--endpoint", help="OTLP endpoint (default localhost:4317, or http://localhost:4318 for HTTP)")
    g.add_argument("--file-path", help="--exporter file: the file to append to (default standard output)")


def _load(args: argparse.Namespace):
    """The settings: config file, then environment, then the flags this command has."""
    from .config import load_config

    flags = {
        "capture": {"pids": getattr(args, "capture_pids", None), "cgroup": getattr(args, "cgroup", None),
                    "kafka_ports": getattr(args, "kafka_ports", None), "ports_only": getattr(args, "ports_only", None),
                    "server_side": getattr(args, "server_side", None),
                    "frame_budget": getattr(args, "frame_budget", None), "ringbuf_mb": getattr(args, "ringbuf_mb", None),
                    "mode": getattr(args, "capture_mode", None), "record_prefix": getattr(args, "record_prefix", None)},
        "exporter": {"type": getattr(args, "exporter", None), "endpoint": getattr(args, "endpoint", None),
                     "file_path": getattr(args, "file_path", None)},
        "agent": {"broker_traffic": getattr(args, "broker_traffic", None),
                  "discover_metadata": False if getattr(args, "no_metadata_lookup", None) else None},
    }
    return load_config(getattr(args, "config", None), flags)


def _capture_settings(cfg):
    from .capture.loader import CaptureSettings

    c = cfg.capture
    return CaptureSettings(frame_budget=c.frame_budget, ringbuf_bytes=(c.ringbuf_mb or 0) << 20,
                           pids=set(c.pids), cgroup_path=c.cgroup, kafka_ports=tuple(c.kafka_ports),
                           ports_only=c.ports_only, server_side=c.server_side, mode=c.mode,
                           record_prefix=c.record_prefix, walker=c.walker, simulate_refusal=c.simulate_refusal)


def _preflight() -> str | None:
    """The one-line reason the live capture cannot start, if any (doctor has the details)."""
    from .doctor import check_btf, check_kernel_version, check_privileges

    for check in (check_privileges, check_btf, check_kernel_version):
        r = check()
        if not r.ok:
            return f"{r.name}: {r.detail} -> {r.fix} (run `otel-kafka-ebpf doctor` for all checks)"
    return None


def _live(args: argparse.Namespace, cfg, on_ready=None):
    from .capture.live import LiveCapture

    settings = _capture_settings(cfg)
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
          f"buffer; {s.gaps} gaps ({s.gap_bytes} bytes not captured); {c.get('skipped_bytes', 0)} bytes left in the "
          f"kernel on purpose (record payloads, SASL)"
          + (f"; the kernel skipped {c['missed_runs']} program runs (their bytes are gaps)" if c.get("missed_runs") else "")
          + (f"; {c['undecoded_at_stop']} events queued at stop not decoded" if c.get("undecoded_at_stop") else ""),
          file=out)


def cmd_settings(args: argparse.Namespace) -> int:
    from .config import describe

    sys.stdout.write(describe(_load(args)))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    try:
        settings = _capture_settings(_load(args))
    except Exception:  # doctor must run even with broken settings: those are reported elsewhere
        settings = None
    return doctor(sys.stdout, settings)


def _recording_writer(path: str):
    from .capture.recording import RecordingWriter

    try:
        return RecordingWriter(path, source="live")
    except OSError as exc:
        raise _UserError(f"{path}: {exc.strerror}") from None


def _with_identities(live, writer):
    """A recording's events, with each new process's identity noted beside them (replays name the services
    the live run named)."""
    from .identity import ProcessDirectory
    from .pipeline import Pipeline

    pipeline = Pipeline(processes=ProcessDirectory(), on_annotation=writer.write)
    for event in live:
        if type(event).__name__ == "ConnectionOpened":
            pipeline._opened(event)
        yield event


def cmd_record(args: argparse.Namespace) -> int:
    cfg = _load(args)
    live = _live(args, cfg, on_ready=lambda: print(f"otel-kafka-ebpf: recording to {args.out} (Ctrl-C stops)",
                                                  file=sys.stderr, flush=True))
    writer = _recording_writer(args.out)
    live.on_poll = writer.flush_if_due  # a quiet capture is on disk within a second too
    with writer, _stop_on_signals(live):
        for event in _with_identities(live, writer):
            writer.write(event)
    _report_counters(live)
    print(f"otel-kafka-ebpf: wrote {writer.events} stream events to {args.out}", file=sys.stderr)
    return EXIT_OK


def _damage(reader) -> int:
    """The exit status of a replay: a damaged recording is said in one line once all it held was replayed."""
    damage = reader.damage()
    if damage is None:
        return EXIT_OK
    print(f"otel-kafka-ebpf: warning: {damage}", file=sys.stderr)
    return EXIT_DAMAGED


def cmd_replay(args: argparse.Namespace) -> int:
    from .capture.recording import read_recording
    from .identity import ProcessDirectory
    from .pipeline import run_trace

    reader = read_recording(args.file)  # a file that is no recording fails here with one line, before any output
    if args.exporter or args.endpoint or getattr(args, "config", None):  # an endpoint is not silently ignored
        from .agent import Agent

        cfg = _load(args)
        if not args.exporter and cfg.exporter.type == "otlp" and not cfg.exporter.endpoint:
            cfg.exporter.type = "console"
        agent = Agent(cfg, live=False)
        try:
            agent.run(reader)
        finally:
            agent.close()
        print(f"otel-kafka-ebpf: {agent.summary()}", file=sys.stderr)
        return _damage(reader)
    status = run_trace(reader, args, sys.stdout, processes=ProcessDirectory(read_proc=False),
                       broker_traffic=bool(args.broker_traffic))
    return status or _damage(reader)


def cmd_trace(args: argparse.Namespace) -> int:
    from .pipeline import run_trace

    cfg = _load(args)
    live = _live(args, cfg, on_ready=lambda: print("otel-kafka-ebpf: tracing Kafka traffic (Ctrl-C stops)",
                                                  file=sys.stderr, flush=True))
    try:
        with _stop_on_signals(live):
            return run_trace(iter(live), args, sys.stdout, broker_traffic=cfg.agent.broker_traffic)
    finally:
        _report_counters(live)


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from .agent import Agent

    cfg = _load(args)
    live = _live(args, cfg, on_ready=lambda: print(
        f"otel-kafka-ebpf: exporting Kafka spans and metrics to {agent.destination} (Ctrl-C stops)",
        file=sys.stderr, flush=True))
    writer = _recording_writer(args.record) if args.record else None
    try:
        agent = Agent(cfg, live=True, on_annotation=writer.write if writer else None,
                      capture_counters=live.current_counters,
                      capture_program=lambda: (live.loaded, live.refusal))
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    next_status = [time.monotonic() + args.status_interval] if args.status_interval else None

    def on_poll() -> None:
        agent.pipeline.tick(live.judging_ns(agent.pipeline.now_ns))
        if writer is not None:
            writer.flush_if_due()
        if next_status and time.monotonic() >= next_status[0]:
            next_status[0] += args.status_interval
            print(f"otel-kafka-ebpf: {agent.summary()}", file=sys.stderr, flush=True)

    live.on_poll = on_poll

    def events():
        for event in live:
            if writer is not None:
                writer.write(event)
            yield event

    try:
        with _stop_on_signals(live):
            agent.run(events())
    finally:
        agent.close()
        if writer is not None:
            writer.close()
        _report_counters(live)
        print(f"otel-kafka-ebpf: {agent.summary()}", file=sys.stderr)
    return EXIT_OK


def _paced(events, speed: float):
    """A recording's events at `speed` times the pace they were captured at."""
    import time

    t0 = first = None
    for event in events:
        if first is None:
            first, t0 = event.ts_ns, time.monotonic()
        ahead = (event.ts_ns - first) / 1e9 / speed - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        yield event


def cmd_top(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .sinks.top import TopView

    cfg = _load(args)
    cfg.exporter.type = "none"
    if args.replay:
        from .capture.recording import read_recording

        events = read_recording(args.replay)  # a file that is no recording fails here, before any output
        agent = Agent(cfg, live=False)
        view = TopView(agent.metrics, agent.resources, sys.stdout, clear=sys.stdout.isatty() and not args.once,
                       refresh_ns=None if args.once else 1_000_000_000)
        agent.pipeline.add_sink(view)
        try:
            agent.run(events if args.once else _paced(events, args.speed))
        finally:
            agent.close(timeout_s=0.5)
        if args.once:
            sys.stdout.write(view.render(agent.pipeline.now_ns))
        return _damage(events)
    live = _live(args, cfg)
    agent = Agent(cfg, live=True, capture_counters=live.current_counters,
                  capture_program=lambda: (live.loaded, live.refusal))
    agent.pipeline.add_sink(TopView(agent.metrics, agent.resources, sys.stdout, clear=sys.stdout.isatty()))
    live.on_poll = lambda: agent.pipeline.tick(live.judging_ns(agent.pipeline.now_ns))
    try:
        with _stop_on_signals(live):
            agent.run(iter(live))
    finally:
        agent.close(timeout_s=0.5)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .fastpath import DECODERS
    from .sinks.pairs import add_trace_arguments

    parser = _Parser(prog="otel-kafka-ebpf", description="Kafka client latency and lag from eBPF, over OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an internal error, show its traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="check that this host can run the agent")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("settings", help="print the settings in force (config file, environment, flags) as TOML")
    p.add_argument("--config", help="TOML config file")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("record", help="capture Kafka traffic into a recording file")
    p.add_argument("--out", required=True, help="recording file to write")
    _add_capture_arguments(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="decode a recording, as `trace` does live (or export it, as `run` would)")
    p.add_argument("file", help="recording file")
    add_trace_arguments(p)
    _add_export_arguments(p, replay=True)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("trace", help="print Kafka request/response pairs live")
    _add_capture_arguments(p)
    add_trace_arguments(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("top", help="live table of consumers (lag, rates, latency, status) and producers")
    _add_capture_arguments(p)
    p.add_argument("--replay", metavar="FILE", help="show a recording instead of live traffic")
    p.add_argument("--speed", type=_above_zero("a speed factor"), default=1.0,
                   help="--replay: how many times faster than captured")
    p.add_argument("--once", action="store_true", help="--replay: print only the table at the end")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("run", help="the node agent: export spans and metrics over OTLP")
    _add_capture_arguments(p)
    _add_export_arguments(p)
    p.add_argument("--record", metavar="FILE", help="also write everything captured to a recording")
    p.add_argument("--no-metadata-lookup", action="store_true", default=None,
                   help="never ask a broker for Metadata (cluster and topic names then wait for the clients')")
    p.add_argument("--broker-traffic", action="store_true", default=None,
                   help="also report brokers' own connections (controller, replication)")
    p.add_argument("--status-interval", type=_seconds, default=0, metavar="S",
                   help="print a one-line summary every S seconds")
    p.set_defaults(func=cmd_run)
    for name in ("record", "replay", "trace", "top", "run"):  # fastpath: which decoder (the core or its oracle)
        sub.choices[name].add_argument("--decoder", choices=DECODERS, default=None,
                                       help="core: the compiled hot path (auto: when built); python: the oracle")
    for p in sub.choices.values():  # also after the command: `otel-kafka-ebpf trace --debug`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .capture.libbpf import LibbpfError
    from .capture.loader import CaptureError
    from .capture.recording import RecordingError
    from .config import ConfigError

    from .fastpath import set_choice

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "decoder", None):  # fastpath: --decoder
        set_choice(args.decoder)
    # a closed pipe (`| head`) ends the output quietly
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.func(args)
    except (ConfigError, CaptureError, RecordingError, LibbpfError, _UserError) as exc:
        return _die(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except PermissionError as exc:
        return _die(f"{exc.filename or ''}: permission denied; run as root or see `otel-kafka-ebpf doctor`")
    except OSError as exc:  # the machine's answer to a file or device the user named (disk full, no such dir)
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return _die(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # a bug, not the user's input: one line, the traceback on request
        if args.debug:
            raise
        return _die(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                    EXIT_INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
