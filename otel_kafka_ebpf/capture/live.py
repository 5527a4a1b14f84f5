"""Live capture as an iterator of stream events: load, attach, poll, assemble, always detach."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Callable

from .events import TLS_UNDECODED, ExecMapEvent, ExitEvent, OpenEvent
from .libbpf import map_delete, map_keys
from .loader import HEADS, POLL_BATCH, CaptureProgram, CaptureSettings, ProgramRefused
from .reassembly import StreamAssembler
from .streams import StreamEvent

DRAIN_S = 2.0  # by default, at most this long to drain the ring buffer after a stop
SWEEP_S = 10.0  # how often the kernel's fd verdicts of exited processes are dropped
MISSED_CHECK_S = 1.0  # how often the kernel's count of skipped program runs is read
TLS_SCAN_S = 2.0  # how often new processes are looked at for TLS libraries
SWEEP_SHARE = 0.01  # and never more of the time than this (a host with many processes has many verdicts)


def forget_exited_fds(fd_verdicts: int) -> int:
    """Drop the kernel's per-fd verdicts ("not a socket", "not Kafka") of processes that no longer exist; returns
    how many. The kernel keys them by (tgid, fd) and a process that exits closes its fds without close(): left
    alone they would fill the map with every process the host ever ran, and a new process given a reused pid would
    inherit them."""
    alive: dict[int, bool] = {}
    removed = 0
    for key in list(map_keys(fd_verdicts, ctypes.c_uint64)):
        tgid = key.value >> 32
        if tgid not in alive:
            alive[tgid] = os.path.exists(f"/proc/{tgid}")
        if not alive[tgid]:
            removed += map_delete(fd_verdicts, key)
    return removed


def degraded_line(refusal: ProgramRefused | None) -> str:
    """What the user is told, in one line, when the capture runs on the heads program."""
    what = (f"running degraded on '{HEADS}': frame heads only (requests, clients and latencies; no topics, "
            f"offsets or lag)")
    if refusal is None:
        return f"walker = heads: {what}"
    return f"{refusal} -- {what}"


def missed_runs_line(missed: int) -> str:
    """What the user is told, once, when the kernel first skips a run of the capture's programs."""
    return (f"the kernel skipped {missed} run(s) of the capture's BPF programs (recursion_misses: a run preempted "
            f"on this CPU, as on preemptible 7.x kernels): the bytes of those syscalls are reported as gaps "
            f"(counter missed_runs, gap reason MISSED_RUN), the decoder resynchronises after each")


class LiveCapture:
    """Iterate stream events until `stop()` (or the duration) ends the capture.

    The BPF program is attached for the lifetime of the iteration and detached in every case:
    normal end, Ctrl-C, an exception in the consumer.
    """

    def __init__(self, settings: CaptureSettings, *, duration_s: float | None = None,
                 on_ready: Callable[[], None] | None = None, poll_ms: int = 100, drain_s: float = DRAIN_S,
                 on_poll: Callable[[], None] | None = None):
        self.settings = settings
        self.duration_s = duration_s
        self.on_ready = on_ready
        self.poll_ms = poll_ms
        self.drain_s = drain_s
        self.on_poll = on_poll  # called after every poll, in the consumer's thread: timers run without traffic
        self._stop = threading.Event()
        self.assembler = StreamAssembler()
        self.program: CaptureProgram | None = None
        self.counters: dict[str, int] = {}
        self.loaded: str | None = None           # the syscall exit program loaded
        self.refusal: ProgramRefused | None = None  # the kernel's refusal of the walker, if it refused it

    def stop(self) -> None:
        self._stop.set()

    def known_until_ns(self) -> int:
        """The wall time (ns) up to which the capture has handed over everything the kernel saw: the start of
        the last ring read that emptied it. Behind the wall clock while the agent works off a backlog (a burst,
        a starved CPU), so a status is judged on what it has read, not on time it has not read yet; 0 before the
        first such read."""
        prog = self.program
        drained = prog.drained_mono_ns if prog is not None else 0
        return drained + self.assembler.clock_offset_ns if drained else 0

    def judging_ns(self, latest_event_ns: int) -> int:
        """The time to run timers (a status, an export) at after a poll: the wall clock as far as the capture
        has read it (known_until_ns), and never before the latest event handed over."""
        known = self.known_until_ns()
        return max(known, latest_event_ns) if known else (latest_event_ns or time.time_ns())

    def current_counters(self) -> dict[str, int]:
        """The kernel's counters now (while running), or as they were at the end."""
        prog = self.program
        return prog.counters() if prog is not None else dict(self.counters)

    def __iter__(self) -> Iterator[StreamEvent]:
        pending: deque[StreamEvent] = deque()
        exited: list[int] = []

        tls_pids: set[int] = set()

        def on_event(raw) -> None:
            pending.extend(self.assembler.feed(raw))
            if isinstance(raw, ExitEvent):  # release the process's kernel state too
                exited.append(raw.pid)
            elif isinstance(raw, ExecMapEvent) or (isinstance(raw, OpenEvent) and raw.tls == TLS_UNDECODED):
                tls_pids.add(raw.pid)  # a library just loaded, or a TLS handshake no probe decodes: its files now

        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        def on_data_record(raw: bytes) -> None:
            pending.extend(self.assembler.feed_data_record(raw))

        next_sweep = time.monotonic() + SWEEP_S
        next_tls_scan = time.monotonic() + TLS_SCAN_S
        next_missed_check = time.monotonic() + MISSED_CHECK_S
        missed_told = False
        with CaptureProgram(self.settings, on_event, on_data_record) as prog:
            self.program = prog
            self.loaded, self.refusal = prog.program, prog.refusal
            if prog.degraded:
                print(f"otel-kafka-ebpf: {degraded_line(prog.refusal)}", file=sys.stderr, flush=True)
            if self.on_ready:
                self.on_ready()
            stop = self._stop
            try:
                while not stop.is_set():
                    if deadline and time.monotonic() >= deadline:
                        break
                    prog.poll(self.poll_ms)
                    if tls_pids and prog.tls is not None:  # before anything else: it races their first TLS call
                        prog.tls.scan(sorted(tls_pids))
                        tls_pids.clear()
                    while pending and not stop.is_set():
                        yield pending.popleft()
                    if self.on_poll is not None:
                        self.on_poll()
                    while exited:
                        prog.forget_process(exited.pop())
                    if prog.tls is not None and time.monotonic() >= next_tls_scan:
                        began = time.monotonic()
                        prog.tls.scan()
                        next_tls_scan = began + max(TLS_SCAN_S, (time.monotonic() - began) / SWEEP_SHARE)
                    if not missed_told and time.monotonic() >= next_missed_check:
                        next_missed_check = time.monotonic() + MISSED_CHECK_S
                        missed = prog.missed_runs()
                        if missed:
                            print(f"otel-kafka-ebpf: {missed_runs_line(missed)}", file=sys.stderr, flush=True)
                            missed_told = True
                    if time.monotonic() >= next_sweep:
                        began = time.monotonic()
                        forget_exited_fds(prog._maps["fd_verdicts"])  # the loader's map; the sweep is the reader's
                        took = time.monotonic() - began
                        next_sweep = began + max(SWEEP_S, took / SWEEP_SHARE)
                # After a stop, what the kernel already wrote is still decoded, for at most drain_s:
                # the traffic may not stop, and Ctrl-C must not wait for a slow consumer.
                drain_until = time.monotonic() + self.drain_s
                more = True
                while time.monotonic() < drain_until:
                    if not pending:
                        if not more:
                            break
                        more = prog.poll(0) >= POLL_BATCH
                        continue
                    yield pending.popleft()
            finally:
                self.counters = prog.counters()
                self.counters["callback_errors"] = prog.callback_errors
                self.counters["undecoded_at_stop"] = len(pending)
                self.program = None
