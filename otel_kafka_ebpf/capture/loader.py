"""Load capture.bpf.o, attach it, read its ring buffer, detach cleanly.

`CaptureProgram` owns every kernel object it creates (object, links, ring buffer) and releases all
of them in `close()`, which runs on normal exit, on Ctrl-C and on exceptions (context manager).
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from . import events as ev
from .layouts import layouts_for
from .libbpf import (LibbpfError, datasec_variables, lib, map_delete, map_keys, map_lookup, map_update, struct_fields,
                     verifier_reason)
from .ringbuf import RingBuffer
from .tls import TlsAttacher

OBJ_DIR = os.path.join(os.path.dirname(__file__), "obj")

MODES = ("digest", "full")
DEFAULT_FRAME_BUDGET = 1 << 20  # 1 MiB: whole ordinary frames (and, with --capture full, Produce and Fetch)
MIN_FRAME_BUDGET = 64  # a frame's head, whatever the budget
DEFAULT_RINGBUF_BYTES = {"digest": ev.RINGBUF_BYTES, "full": 4 * ev.RINGBUF_BYTES}
DEFAULT_WAKEUP_BYTES = 256 << 10  # the reader is woken once this much waits (else at its poll interval)

DATA_HEADER = struct.Struct("<IIQQQIIBBHHBBQ")
assert DATA_HEADER.size == ctypes.sizeof(ev.DataEventHeader)


def object_path(name: str) -> str:
    return os.path.join(OBJ_DIR, f"{name}.bpf.o")


@dataclass
class CaptureSettings:
    frame_budget: int = DEFAULT_FRAME_BUDGET
    ringbuf_bytes: int | None = None  # None: DEFAULT_RINGBUF_BYTES of the mode
    pids: set[int] = field(default_factory=set)
    cgroup_path: str | None = None  # cgroup v2 directory (sidecar mode)
    kafka_ports: tuple[int, ...] = ()
    ports_only: bool = False
    server_side: bool = False  # also capture connections a process accepted (a broker's side)
    mode: str = "digest"  # digest: record batch headers, not records; full: frames under the budget
    record_prefix: int = 0  # digest: record bytes copied after each uncompressed batch's header
    wakeup_bytes: int | None = None  # None: DEFAULT_WAKEUP_BYTES, at most a quarter of the ring buffer
    walker: str = "auto"  # auto: the frame walker, or the heads program if the kernel refuses it; heads: that only
    simulate_refusal: bool = False  # tests: the walker does what every verifier refuses, so the fallback runs
    tls: bool = True  # uprobes on the TLS libraries processes map (OpenSSL, Go crypto/tls): their plaintext


# The programs on the raw syscall exit: one of them is loaded. The frame walker (digest and full
# modes), and the fallback a kernel that refuses the walker gets: frame heads only, no bpf_loop.
WALKER, HEADS = "sys_exit", "sys_exit_heads"
WALKERS = ("auto", "heads")


def _twin(name: str, names: set[str]) -> str | None:
    """Which of the walker/heads pair a program belongs to: the syscall exit programs, and every program
    `X` with a twin `X_heads` (the TLS return probes): WALKER for X, HEADS for X_heads, None for the rest."""
    if name in (WALKER, HEADS):
        return name
    if name.endswith("_heads") and name[:-len("_heads")] in names:
        return HEADS
    if name + "_heads" in names:
        return WALKER
    return None


class CaptureError(Exception):
    """The capture could not start; the message is one line for the user."""


class ProgramRefused(CaptureError):
    """The kernel's verifier refused a program: which, and its reason (one line)."""

    def __init__(self, program: str, reason: str):
        self.program = program
        self.reason = reason
        super().__init__(f"the kernel refused BPF program '{program}': {reason}")


@dataclass(frozen=True)
class VerifierStats:
    """What the verifier reported for one program it accepted (log level 4: statistics)."""
    insns: int          # instructions processed (the kernel's limit: 1,000,000)
    usec: int           # verification time
    stack: str          # stack depth per frame, as the kernel prints it ("144+0+64")


VERIFIER_LOG_BYTES = 1 << 16
_STATS = re.compile(r"processed (\d+) insns")
_TIME = re.compile(r"verification time (\d+) usec")
_DEPTH = re.compile(r"stack depth ([\d+]+)")


def recursion_misses(fdinfo: str) -> int:
    """A loaded program's `recursion_misses` from its /proc/<pid>/fdinfo text: the runs the kernel skipped because
    the program was already running on that CPU (a run preempted by another task's syscall, on a preemptible
    kernel). 0 where the kernel does not count them (before 5.12)."""
    for line in fdinfo.splitlines():
        if line.startswith("recursion_misses:"):
            return int(line.split()[1])
    return 0


# Raw events handed to the consumer: (kind, fields...)
@dataclass(slots=True)
class RawData:
    conn_id: int
    ts_mono: int  # the first syscall whose bytes the event covers
    offset: int
    pid: int
    tid: int
    direction: int
    gap_flags: int
    payload: bytes
    flags: int = 0
    last_ts_mono: int | None = None  # the last syscall's (None: ts_mono)
    skips: tuple[tuple[int, int], ...] = ()  # (position in payload, stream bytes skipped there)
    skip_reason: int = 0


def cgroup2_root() -> str | None:
    """Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup, or .../unified on hybrid hosts)."""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _cgroup_id_and_level(path: str) -> tuple[int, int]:
    """A cgroup v2 directory's id (its inode number) and depth below the v2 root."""
    root = cgroup2_root()
    if root is None:
        raise CaptureError("no cgroup v2 hierarchy is mounted: the cgroup filter needs one")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CaptureError(f"cgroup {path}: {exc.strerror}") from None
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    if rel.startswith("..") or not os.path.exists(os.path.join(path, "cgroup.procs")):
        raise CaptureError(f"cgroup {path} is not a cgroup v2 directory under {root}")
    level = 0 if rel == "." else len(rel.split(os.sep))
    return st.st_ino, level


TCP_LISTEN = "0A"


def listening_ports() -> set[tuple[int, int]]:
    """(netns inode, port) of every listening TCP socket, over all network namespaces of the host."""
    seen_ns: set[int] = set()
    out: set[tuple[int, int]] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if ns in seen_ns:
            continue
        seen_ns.add(ns)
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{entry}/net/{table}") as fh:
                    next(fh, None)
                    for line in fh:
                        fields = line.split()
                        if len(fields) > 3 and fields[3] == TCP_LISTEN:
                            out.add((ns, int(fields[1].rsplit(":", 1)[1], 16)))
            except OSError:
                continue
    return out


def parse_data_event(raw: bytes) -> RawData:
    """struct oke_data_event, its payload and its skip table."""
    (_, n, conn_id, ts, offset, pid, tid, direction, gap_flags, flags, n_skips, skip_reason, _,
     last_ts) = DATA_HEADER.unpack_from(raw)
    start = DATA_HEADER.size
    skips = ()
    if n_skips:
        table = struct.unpack_from(f"<{2 * n_skips}I", raw, start + n)
        skips = tuple(zip(table[::2], table[1::2]))
    return RawData(conn_id, ts, offset, pid, tid, direction, gap_flags, raw[start:start + n], flags, last_ts,
                   skips, skip_reason)


POLL_BATCH = 1024  # events handed over per poll() at most


def find_map(obj, suffix: str):
    """The object's map whose name ends with `suffix` (libbpf names a data section's map after the object)."""
    L = lib()
    m = L.bpf_object__next_map(obj, None)
    while m:
        if L.bpf_map__name(m).decode().endswith(suffix):
            return m
        m = L.bpf_object__next_map(obj, m)
    raise CaptureError(f"BPF object has no {suffix} map: rebuild with `make bpf`")


def write_rodata(obj, values: dict[str, ctypes.Structure]) -> None:
    """Before load: each `const volatile` variable named in `values` goes where the object's BTF puts it in
    .rodata, over a copy of the section's own initial bytes, so every other constant there keeps its value."""
    L = lib()
    rodata = find_map(obj, ".rodata")
    size = ctypes.c_size_t()
    initial = L.bpf_map__initial_value(rodata, ctypes.byref(size))
    places = datasec_variables(obj, ".rodata")
    buf = (ctypes.c_char * size.value)()
    if initial:
        ctypes.memmove(buf, initial, size.value)
    for name, value in values.items():
        at, var_size = places.get(name, (None, 0))
        if at is None or var_size != ctypes.sizeof(value) or at + var_size > size.value or not initial:
            raise CaptureError(f"BPF object's settings ({name} in .rodata) are {var_size} bytes, the agent's "
                               f"{ctypes.sizeof(value)}: rebuild with `make bpf`")
        ctypes.memmove(ctypes.addressof(buf) + at, ctypes.byref(value), var_size)
    L.bpf_map__set_initial_value(rodata, buf, size.value)


def _ringbuf_size(n: int) -> int:
    """Ring buffers must be a power-of-two multiple of the page size."""
    page = os.sysconf("SC_PAGE_SIZE")
    size = max(n, page)
    return 1 << (size - 1).bit_length()


class CaptureProgram:
    """`on_event` gets each event parsed (RawData, OpenEvent, CloseEvent, ExitEvent); with
    `on_data_record`, data events go there as the ring's raw bytes instead (parsed by the consumer,
    which saves building a RawData per event on the hot path)."""

    def __init__(self, settings: CaptureSettings, on_event: Callable[[object], None],
                 on_data_record: Callable[[bytes], None] | None = None):
        self.settings = settings
        self._on_event = on_event
        self._on_data_record = on_data_record
        self._obj = None
        self._links: list[int] = []
        self._rb: RingBuffer | None = None
        # CLOCK_MONOTONIC (bpf_ktime_get_ns's clock) just before the last read that emptied the ring: every event
        # the kernel had written by then has been handed over (0: not yet)
        self.drained_mono_ns = 0
        self.callback_errors = 0
        self._maps: dict[str, int] = {}
        self._ncpus = 0
        self.verifier_stats: dict[str, VerifierStats] = {}
        self.load_seconds = 0.0
        self._logs: dict[str, ctypes.Array] = {}
        self._conn_fields: tuple[tuple[int, int], tuple[int, int], int] | None = None  # struct conn, see _conns_of
        self.program = WALKER  # the syscall exit program loaded
        self._prog_fds: list[int] = []  # the programs attached, for the kernel's count of their skipped runs
        self.refusal: ProgramRefused | None = None  # why the walker is not loaded, when it is not
        self.tls: TlsAttacher | None = None  # the TLS probes, once attached
        self._twins_seen: set[str] = set()  # the object's program names, once opened

    # -- life cycle --------------------------------------------------------------------------
    def open(self) -> "CaptureProgram":
        """Load and attach. If the kernel refuses the frame walker, the heads program is loaded
        instead (`refusal` says why, `degraded` is true); any other failure raises CaptureError."""
        path = object_path("capture")
        if not os.path.exists(path):
            raise CaptureError(f"BPF object {path} is missing: run `make bpf`")
        if self.settings.walker not in WALKERS:
            raise CaptureError(f"walker {self.settings.walker!r}: expected one of {', '.join(WALKERS)}")
        first = HEADS if self.settings.walker == "heads" else WALKER
        try:
            self._load(path, first)
        except ProgramRefused as exc:
            # the walker, or a program that walks as it does (the TLS return probe): their heads twins instead
            if first != WALKER or exc.program != WALKER and not exc.program + "_heads" in self._twins_seen:
                raise
            self.refusal = exc
            self._load(path, HEADS)
        self._open_maps()
        self._read_conn_layout()
        for pid in self.settings.pids:
            self.add_pid(pid)
        self._load_listeners()
        self._load_layouts()
        try:
            self._attach_all()
        except LibbpfError as exc:
            self.close()
            raise CaptureError(f"attaching the BPF programs failed: {exc}") from None
        try:
            self._rb = RingBuffer(self._maps["events"], _ringbuf_size(self.ringbuf_bytes))
        except OSError as exc:
            self.close()
            raise CaptureError(f"mapping the ring buffer failed: {exc.strerror}") from None
        return self

    @property
    def degraded(self) -> bool:
        return self.program != WALKER

    def _load(self, path: str, program: str) -> None:
        """Open the object with `program` as the syscall exit program, and load it into the kernel."""
        L = lib()
        self.program = program
        try:
            self._obj = L.bpf_object__open_file(path.encode(), None)
            self._twins_seen = self._names
            for name, prog in self._programs():
                twin = _twin(name, self._names)
                if twin is not None:
                    L.bpf_program__set_autoload(prog, twin == program)
            self._configure()
            self._ask_for_stats()
            started = time.monotonic()
            L.bpf_object__load(self._obj)
            self.load_seconds = time.monotonic() - started
        except LibbpfError as exc:
            refused = self._refusal()
            self.close()
            if refused:
                raise refused from None
            raise CaptureError(f"loading the BPF program failed: {exc}") from None
        self._read_stats()

    def _open_maps(self) -> None:
        L = lib()
        for name in ("events", "counters", "conns", "pid_filter", "fd_verdicts", "listen_ports", "layouts",
                     "layout_of", "pending", "tls_attached"):
            self._maps[name] = L.bpf_map__fd(L.bpf_object__find_map_by_name(self._obj, name.encode()))
        self._ncpus = L.libbpf_num_possible_cpus()

    def _configure(self) -> None:
        L = lib()
        s = self.settings
        cfg = ev.Config()
        cfg.frame_budget = max(MIN_FRAME_BUDGET, int(s.frame_budget))
        if len(s.pids) > ev.MAX_PIDS:
            raise CaptureError(f"at most {ev.MAX_PIDS} processes can be named")
        cfg.filter_pids = 1 if s.pids else 0
        if s.cgroup_path:
            cfg.cgroup_id, cfg.cgroup_level = _cgroup_id_and_level(s.cgroup_path)
        if len(s.kafka_ports) > ev.MAX_KAFKA_PORTS:
            raise CaptureError(f"at most {ev.MAX_KAFKA_PORTS} Kafka ports can be forced")
        for i, port in enumerate(s.kafka_ports):
            cfg.kafka_ports[i] = port
        cfg.ports_only = 1 if s.ports_only else 0
        cfg.self_tgid = os.getpid()
        cfg.server_side = 1 if s.server_side else 0
        if s.mode not in MODES:
            raise CaptureError(f"capture mode {s.mode!r}: expected one of {', '.join(MODES)}")
        cfg.capture_mode = ev.MODE_DIGEST if s.mode == "digest" else ev.MODE_FULL
        cfg.record_prefix = max(0, int(s.record_prefix)) if s.mode == "digest" else 0
        ring = _ringbuf_size(self.ringbuf_bytes)
        wakeup = min(DEFAULT_WAKEUP_BYTES, ring // 4) if s.wakeup_bytes is None else int(s.wakeup_bytes)
        cfg.wakeup_bytes = min(max(0, wakeup), ring)  # a whole ring: never woken, read at each poll
        cfg.refuse_walker = 1 if s.simulate_refusal else 0
        write_rodata(self._obj, {"cfg": cfg})  # the other constants there (zero_conn...) keep their values
        events = L.bpf_object__find_map_by_name(self._obj, b"events")
        L.bpf_map__set_max_entries(events, _ringbuf_size(self.ringbuf_bytes))
        scratch = L.bpf_object__find_map_by_name(self._obj, b"scratch")
        L.bpf_map__set_max_entries(scratch, L.libbpf_num_possible_cpus())

    @property
    def ringbuf_bytes(self) -> int:
        s = self.settings
        return s.ringbuf_bytes if s.ringbuf_bytes else DEFAULT_RINGBUF_BYTES.get(s.mode, DEFAULT_RINGBUF_BYTES["digest"])

    def _load_layouts(self) -> None:
        """The digest layouts of the mode (SASL bodies are skipped in every mode)."""
        table = layouts_for(self.settings.mode)
        if len(table) >= ev.MAX_LAYOUTS:
            raise CaptureError(f"{len(table)} digest layouts, the kernel side holds {ev.MAX_LAYOUTS - 1}")
        fd_layouts, fd_of = self._maps["layouts"], self._maps["layout_of"]
        for layout_id, (key, ops) in enumerate(sorted(table.items()), start=1):
            if len(ops) > ev.LAYOUT_OPS:
                raise CaptureError(f"digest layout {key} has {len(ops)} ops, at most {ev.LAYOUT_OPS}")
            value = ev.Layout()
            for i, (op, arg) in enumerate(ops):
                value.op[i], value.arg[i] = op, arg
            map_update(fd_layouts, ctypes.c_uint32(layout_id), value)
            map_update(fd_of, ctypes.c_uint32(ev.layout_key(*key)), ctypes.c_uint8(layout_id))

    @property
    def _names(self) -> set[str]:
        return {name for name, _ in self._programs()}

    def _loaded(self, name: str) -> bool:
        """Whether `name` is loaded: one of each walker/heads pair is."""
        twin = _twin(name, self._names)
        return twin is None or twin == self.program

    def program_named(self, name: str) -> int:
        """A loaded program of the object, by name (the TLS attacher's way to its programs)."""
        for n, prog in self._programs():
            if n == name:
                return prog
        raise CaptureError(f"the BPF object has no program {name!r}")

    def _programs(self):
        L = lib()
        prog = L.bpf_object__next_program(self._obj, None)
        while prog:
            yield L.bpf_program__name(prog).decode(), prog
            prog = L.bpf_object__next_program(self._obj, prog)

    def _ask_for_stats(self) -> None:
        """Each program's verifier log at level 4 (statistics, and the reason of a refusal) into a
        buffer of its own, instead of libbpf's retry at level 1 (the whole state dump)."""
        L = lib()
        self._logs.clear()
        for name, prog in self._programs():
            if not self._loaded(name):
                continue
            buf = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
            self._logs[name] = buf
            L.bpf_program__set_log_buf(prog, buf, len(buf))
            L.bpf_program__set_log_level(prog, 4)

    def _read_stats(self) -> None:
        for name, buf in self._logs.items():
            log = buf.value.decode(errors="replace")
            insns, usec, depth = _STATS.search(log), _TIME.search(log), _DEPTH.search(log)
            if insns:
                self.verifier_stats[name] = VerifierStats(int(insns.group(1)), int(usec.group(1)) if usec else 0,
                                                          depth.group(1) if depth else "")
        self._logs.clear()

    def _refusal(self) -> ProgramRefused | None:
        """The program whose log says why the verifier refused it, if one does."""
        # the syscall exit program first: a walker the kernel refuses refuses the probes that walk as it does too
        for name, buf in sorted(self._logs.items(), key=lambda kv: kv[0] not in (WALKER, HEADS)):
            reason = verifier_reason(buf.value.decode(errors="replace"))
            if reason:
                return ProgramRefused(name, reason)
        return None

    def _attach_all(self) -> None:
        L = lib()
        for name, prog in self._programs():
            if not self._loaded(name):
                continue
            if L.bpf_program__section_name(prog).startswith((b"uprobe", b"uretprobe")):
                continue  # the TLS probes: on the files the TLS attacher finds
            self._links.append(L.bpf_program__attach(prog))
            self._prog_fds.append(L.bpf_program__fd(prog))
        if self.settings.tls:
            self.tls = TlsAttacher(self.program_named, self._maps["tls_attached"], heads=self.degraded,
                                   pids=self.settings.pids, say=self._say)
            self.tls.scan_system()
            self.tls.scan()

    def _say(self, line: str) -> None:
        print(f"otel-kafka-ebpf: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        L = lib()
        if self._rb:
            self._rb.close()
            self._rb = None
        if self.tls is not None:
            self.tls.close()
            self.tls = None
        while self._links:
            L.bpf_link__destroy(self._links.pop())
        self._prog_fds.clear()
        if self._obj:
            L.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "CaptureProgram":
        return self.open() if self._obj is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def attached(self) -> int:
        """Links in place: the tracepoint programs' and the TLS probes'."""
        return len(self._links) + (self.tls.links if self.tls is not None else 0)

    # -- reading -----------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100) -> int:
        """Deliver up to `POLL_BATCH` pending events to on_event, waiting up to `timeout_ms` for the
        first; returns how many. The ring is read through its mapped pages, a batch at a time; the
        kernel wakes the reader only once enough waits, so a quiet ring costs one wake-up per timeout."""
        rb = self._rb
        rb.wait(timeout_ms)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        records = rb.read(POLL_BATCH)
        if len(records) < POLL_BATCH:
            self.drained_mono_ns = before
        on_event = self._on_event
        on_data = self._on_data_record
        for raw in records:
            try:
                etype = raw[0]  # the type tag is first (little-endian u32 below 256)
                if etype == ev.EV_DATA:
                    if on_data is not None:
                        on_data(raw)
                        continue
                    event = parse_data_event(raw)
                elif etype == ev.EV_OPEN:
                    event = ev.OpenEvent.from_buffer_copy(raw)
                elif etype == ev.EV_CLOSE:
                    event = ev.CloseEvent.from_buffer_copy(raw)
                elif etype == ev.EV_EXIT:
                    event = ev.ExitEvent.from_buffer_copy(raw)
                elif etype == ev.EV_EXEC_MAP:
                    event = ev.ExecMapEvent.from_buffer_copy(raw)
                else:
                    self.callback_errors += 1
                    continue
                on_event(event)
            except Exception:  # a bad record costs that record only
                self.callback_errors += 1
        return len(records)

    # -- maps --------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed over CPUs."""
        fd = self._maps["counters"]
        out = {}
        for idx, name in enumerate(ev.COUNTERS):
            values = (ctypes.c_uint64 * self._ncpus)()
            key = ctypes.c_uint32(idx)
            map_lookup(fd, key, values)
            out[name] = sum(values)
        out["missed_runs"] = self.missed_runs()
        if self._rb is not None:
            out["ring_bytes_read"] = self._rb.bytes_read
            out["reader_wakeups"] = self._rb.wakeups
        return out

    def missed_runs(self) -> int:
        """Runs of the attached programs the kernel skipped (syscalls never seen; the capture declares their bytes
        as MISSED_RUN gaps where the socket tells how many)."""
        total = 0
        for fd in self._prog_fds:
            try:
                with open(f"/proc/self/fdinfo/{fd}") as fh:
                    total += recursion_misses(fh.read())
            except OSError:
                pass
        return total

    def add_pid(self, pid: int) -> None:
        map_update(self._maps["pid_filter"], ctypes.c_uint32(pid), ctypes.c_uint8(1))

    def _load_listeners(self) -> None:
        """Tell the kernel side which (netns, port) were listening, so connections that predate the
        agent are known as server ends (not mistaken for clients by their responses)."""
        fd = self._maps["listen_ports"]
        for netns, port in listening_ports():
            map_update(fd, ctypes.c_uint64(netns << 16 | port), ctypes.c_uint8(1))

    def _read_conn_layout(self) -> None:
        """Where struct conn holds conn_id and tgid (offset, size), and its size: the object's BTF says, read at
        start so that an object without them fails here and not at a process's exit."""
        L = lib()
        fields = struct_fields(self._obj, "conn")
        if "conn_id" not in fields or "tgid" not in fields:
            self.close()
            raise CaptureError("BPF object's struct conn has no conn_id or tgid: rebuild with `make bpf`")
        conns_map = L.bpf_object__find_map_by_name(self._obj, b"conns")
        self._conn_fields = (fields["conn_id"], fields["tgid"], L.bpf_map__value_size(conns_map))

    def _conns_of(self, pid: int) -> list[tuple[ctypes.c_uint64, int]]:
        """(conns map key, conn_id) of the process's connections."""
        (id_at, id_size), (tgid_at, tgid_size), size = self._conn_fields
        out = []
        conns = self._maps["conns"]
        value = (ctypes.c_uint8 * size)()
        for key in list(map_keys(conns, ctypes.c_uint64)):
            if map_lookup(conns, key, value) and \
                    int.from_bytes(bytes(value[tgid_at:tgid_at + tgid_size]), "little") == pid:
                out.append((key, int.from_bytes(bytes(value[id_at:id_at + id_size]), "little")))
        return out

    def forget_process(self, pid: int) -> int:
        """Drop kernel state of an exited process's connections; returns entries removed."""
        if self.tls is not None:
            self.tls.forget(pid)
        removed = 0
        conns, pending = self._maps["conns"], self._maps["pending"]
        for key, conn_id in self._conns_of(pid):
            for direction in (0, 1):
                map_delete(pending, ctypes.c_uint64(conn_id << 1 | direction))
            removed += map_delete(conns, key)
        return removed
