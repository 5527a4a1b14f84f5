"""The TLS probes: which files carry a TLS library, and the uprobes on them, found without a restart.

The kernel side (bpf/tls.bpf.h) turns a TLS library's plaintext reads and writes into the stream the syscall
path makes. This side finds the libraries: it reads each process's /proc/PID/maps, and every executable
file mapped there that it has not seen (by device and inode) is looked at once:

- OpenSSL, shared (libssl.so.3, libssl.so.1.1) or linked into a binary or library (librdkafka inside
  confluent-kafka's wheels, Node.js): SSL_read, SSL_write, their _ex twins and SSL_set_fd, from .dynsym or
  .symtab;
- Go crypto/tls (otel_kafka_ebpf.capture.gotls, when that module is there).

A uprobe is attached to a file's inode, so one attachment covers every process that maps the file, now and
later. A process that starts later with a file already probed costs nothing here; a new file is found at the
next scan (`scan()`; the live loop calls it every SCAN_S, and at once when a TLS handshake shows up from a
process whose file is not probed yet). A file that cannot be probed is said once, in one line, and counted.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import events as ev
from .elf import ElfError, ElfFile
from .libbpf import LibbpfError, attach_uprobe, lib, map_update

try:  # Go crypto/tls: its own module (offsets from DWARF, returns found by disassembly)
    from . import gotls
except ImportError:  # pragma: no cover - the module is optional until it lands
    gotls = None

SCAN_S = 2.0
FULL_SCAN_EVERY = 15  # scans: the processes seen before are read again (a library loaded late) every this many
# the system's shared OpenSSL, probed at start whether or not a process maps it yet: a client that starts later
# is seen from its first connection
SYSTEM_LIBSSL = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64")
DIR_SEND, DIR_RECV = 0, 1

# OpenSSL: function -> (entry program, cookie flags) and whether its return is probed
OPENSSL_ENTRIES = {
    "SSL_write": ("tls_enter", DIR_SEND),
    "SSL_read": ("tls_enter", DIR_RECV),
    "SSL_write_ex": ("tls_enter", DIR_SEND | ev.TLS_COOKIE_EX),
    "SSL_read_ex": ("tls_enter", DIR_RECV | ev.TLS_COOKIE_EX),
    "SSL_set_fd": ("tls_set_fd", 0),
    "SSL_set_rfd": ("tls_set_fd", 0),
    "SSL_set_wfd": ("tls_set_fd", 0),
}
OPENSSL_RETURNS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")
OPENSSL_NEEDED = ("SSL_write", "SSL_read")
OPENSSL_NEEDLE = b"SSL_write\0"


@dataclass
class ProbedFile:
    """One file looked at: what it is, and the probes on it (or why none)."""
    path: str
    stack: str            # "openssl-shared", "openssl-static", "go", or "" (no TLS library in it)
    slot: int = -1
    links: list[int] = field(default_factory=list)
    reason: str = ""      # why it is not probed, when it carries a TLS library that is not

    @property
    def probed(self) -> bool:
        return bool(self.links)


def _maps_files(pid: int) -> Iterator[tuple[tuple[int, int], str]]:
    """((device, inode), path) of the executable file mappings of a process."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    seen = set()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or b"x" not in parts[1] or not parts[5].startswith(b"/"):
            continue
        inode = int(parts[4])
        if not inode:
            continue
        major, _, minor = parts[3].partition(b":")
        key = (int(major, 16) << 20 | int(minor, 16), inode)
        if key in seen:
            continue
        seen.add(key)
        path = parts[5].decode(errors="replace")
        if path.endswith(" (deleted)"):
            continue
        yield key, path


class TlsAttacher:
    """Probes the TLS libraries of processes. `program(name)` gives a loaded BPF program by name; `heads`: the
    kernel refused the frame walker, so the return probes are the heads twins."""

    def __init__(self, program: Callable[[str], int], attached_map_fd: int, heads: bool = False,
                 pids: set[int] | None = None, say: Callable[[str], None] | None = None):
        self._program = program
        self._attached_fd = attached_map_fd
        self._heads = heads
        self._pids = pids or set()
        self._say = say or (lambda line: None)
        self.files: dict[tuple[int, int], ProbedFile] = {}
        self.processes: dict[int, set[tuple[int, int]]] = {}  # pid -> the TLS files it maps
        self.unsupported = 0   # files with a TLS library the probes cannot follow
        self.scan_seconds = 0.0
        self.scans = 0
        self._slots = 0
        self._seen_pids: set[int] = set()

    # ---- scanning ----

    def scan(self, pids: list[int] | None = None) -> int:
        """Look at the processes (those that appeared since the last scan, all of them every FULL_SCAN_EVERY
        scans; or `pids`); files seen the first time are probed. How many new files were probed."""
        began = time.monotonic()
        probed = 0
        if pids is None:
            running = set(self._all_pids())
            full = self.scans % FULL_SCAN_EVERY == 0
            pids = sorted(running if full else running - self._seen_pids)
            self._seen_pids = running
            self.processes = {pid: keys for pid, keys in self.processes.items() if pid in running}
            self.scans += 1
        for pid in pids:
            tls_files = set()
            for key, path in _maps_files(pid):
                found = self.files.get(key)
                if found is None:
                    found = self.files[key] = self._look_at(pid, path)
                    probed += found.probed
                if found.stack:
                    tls_files.add(key)
            if tls_files:
                self.processes[pid] = tls_files
        self.scan_seconds += time.monotonic() - began
        return probed

    def scan_system(self) -> int:
        """Probe the system's libssl files, mapped by a process or not."""
        probed = 0
        for d in SYSTEM_LIBSSL:
            try:
                names = sorted(n for n in os.listdir(d) if n.startswith("libssl.so."))
            except OSError:
                continue
            for n in names:
                path = os.path.join(d, n)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (os.major(st.st_dev) << 20 | os.minor(st.st_dev), st.st_ino)
                if key not in self.files:
                    self.files[key] = found = self._look_at(None, os.path.realpath(path))
                    probed += found.probed
        return probed

    def forget(self, pid: int) -> None:
        self.processes.pop(pid, None)

    def stacks_of(self, pid: int) -> list[ProbedFile]:
        """The TLS libraries a process maps, probed or not (doctor)."""
        return [self.files[k] for k in sorted(self.processes.get(pid, ()))]

    def _all_pids(self) -> list[int]:
        if self._pids:
            return sorted(self._pids)
        return sorted(int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid())

    # ---- one file ----

    def _look_at(self, pid: int | None, path: str) -> ProbedFile:
        real = f"/proc/{pid}/root{path}" if pid else path  # the file as the process sees it (its mount namespace)
        try:
            elf = ElfFile.open(real)
        except ElfError:
            return ProbedFile(path, "")
        with elf:
            if elf.contains(OPENSSL_NEEDLE):
                return self._openssl(path, real, elf)
            if gotls is not None and gotls.is_candidate(elf):
                return self._go(path, real, elf)
        return ProbedFile(path, "")

    def _openssl(self, path: str, real: str, elf: ElfFile) -> ProbedFile:
        funcs = elf.lookup(OPENSSL_ENTRIES)
        missing = [n for n in OPENSSL_NEEDED if n not in funcs]
        dynamic = elf.section(".dynsym") is not None and all(not funcs[n].local for n in OPENSSL_NEEDED
                                                             if n in funcs)
        stack = "openssl-shared" if "libssl" in os.path.basename(path) and dynamic else "openssl-static"
        if missing:
            return self._unsupported(ProbedFile(path, stack), f"no symbol {', '.join(missing)}"
                                     + ("" if elf.has_symtab() else " (stripped)"))
        targets = []  # (program, offset, cookie, retprobe)
        for name, (prog, flags) in OPENSSL_ENTRIES.items():
            sym = funcs.get(name)
            if sym is None:
                continue
            offset = elf.file_offset(sym.vaddr)
            if offset is None:
                return self._unsupported(ProbedFile(path, stack), f"{name} is outside the loaded segments")
            targets.append((prog, offset, flags, False))
            if name in OPENSSL_RETURNS:
                targets.append(("tls_return_heads" if self._heads else "tls_return", offset, 0, True))
        return self._attach(ProbedFile(path, stack), real, targets)

    def _go(self, path: str, real: str, elf: ElfFile) -> ProbedFile:
        found = ProbedFile(path, "go")
        target = gotls.probe_points(real, elf=elf)
        if isinstance(target, gotls.GoTlsUnsupported):
            return self._unsupported(found, target.reason)
        slot = self._next_slot()
        if slot < 0:
            return self._unsupported(found, f"more than {ev.MAX_TLS_FILES} TLS files")
        try:
            gotls.load_offsets(self._program, slot, target)
        except (LibbpfError, OSError, ValueError) as exc:
            return self._unsupported(found, f"its offsets could not be loaded: {exc}")
        return self._attach(found, real, gotls.attachments(target, heads=self._heads), slot=slot)

    def _next_slot(self) -> int:
        if self._slots >= ev.MAX_TLS_FILES:
            return -1
        self._slots += 1
        return self._slots - 1

    def _attach(self, found: ProbedFile, real: str, targets, slot: int | None = None) -> ProbedFile:
        found.slot = self._next_slot() if slot is None else slot
        if found.slot < 0:
            return self._unsupported(found, f"more than {ev.MAX_TLS_FILES} TLS files")
        try:
            for prog, offset, flags, retprobe in targets:
                cookie = flags | (found.slot << 16)
                found.links.append(attach_uprobe(self._program(prog), real, offset, cookie, retprobe))
        except LibbpfError as exc:
            self._detach(found)
            return self._unsupported(found, f"attaching failed: {exc}")
        # connections that begin from now on are seen from their start
        map_update(self._attached_fd, ctypes.c_uint32(found.slot), ctypes.c_uint64(time.clock_gettime_ns(
            time.CLOCK_MONOTONIC)))
        return found

    def _unsupported(self, found: ProbedFile, reason: str) -> ProbedFile:
        found.reason = reason
        self.unsupported += 1
        self._say(f"TLS of {found.path} ({found.stack}) is not seen: {reason}")
        return found

    def _detach(self, found: ProbedFile) -> None:
        L = lib()
        while found.links:
            L.bpf_link__destroy(found.links.pop())

    def close(self) -> None:
        for found in self.files.values():
            self._detach(found)

    @property
    def links(self) -> int:
        return sum(len(f.links) for f in self.files.values())


# ---- doctor: per Kafka client process, whether its TLS is seen ----

_STACK_WORDS = {"openssl-shared": "shared OpenSSL", "openssl-static": "OpenSSL linked in", "go": "Go crypto/tls"}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _kafka_client(pid: int, files: list[ProbedFile]) -> bool:
    """A Kafka client by what it runs: librdkafka mapped, or Kafka named on its command line (a JVM's class
    path holds kafka-clients), and not a broker."""
    cmd = _cmdline(pid)
    if "kafka.Kafka" in cmd.split() or "otel_kafka_ebpf" in cmd or "otel-kafka-ebpf" in cmd:
        return False  # a broker, or this agent
    return "kafka" in cmd.lower() or any("rdkafka" in f.path for f in files)


def client_report(attacher: TlsAttacher) -> list[tuple[int, str, bool, str]]:
    """(pid, command, seen, how or why not) of each running Kafka client process."""
    out = []
    for pid in attacher._all_pids():
        files = attacher.stacks_of(pid)
        if not _kafka_client(pid, files):
            continue
        cmd = _cmdline(pid)[:60]
        probed = sorted({_STACK_WORDS[f.stack] for f in files if f.probed})
        refused = [f"{f.path}: {f.reason}" for f in files if f.stack and not f.probed]
        if probed:
            out.append((pid, cmd, True, "through " + ", ".join(probed)))
        elif refused:
            out.append((pid, cmd, False, "; ".join(refused)))
        elif cmd.split(" ", 1)[0].endswith("java"):
            out.append((pid, cmd, False, "Java's TLS (JSSE) runs inside the JVM: its connections are reported as "
                                         "'TLS, not decoded'; plain-text listeners are seen"))
        else:
            out.append((pid, cmd, True, "no TLS library mapped: plain text, seen at the socket"))
    return out
