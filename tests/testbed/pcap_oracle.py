"""An independent record of loopback TCP traffic: dumpcap/tshark capture, reassembled by sequence number.

Used as the oracle the agent's reassembled streams are compared against, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class OracleError(RuntimeError):
    pass


@dataclass
class TcpStream:
    client_port: int
    server_port: int
    c2s: bytearray = field(default_factory=bytearray)  # client -> server
    s2c: bytearray = field(default_factory=bytearray)


class LoopbackCapture:
    """Capture TCP on `lo` for the given server port while the `with` block runs."""

    def __init__(self, port: int, path: str | os.PathLike | None = None):
        if not shutil.which("tshark"):
            raise OracleError("tshark is not installed (make apt-deps installs it)")
        self.port = port
        self._tmp = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="oke-pcap-")
            path = Path(self._tmp.name) / "lo.pcapng"
        self.path = Path(path)
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    def __enter__(self) -> "LoopbackCapture":
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-B", "128", "-s", "0", "-f", f"tcp port {self.port}", "-w", str(self.path), "-q"],
            stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._stderr.seek(0)
            if b"Capturing on" in self._stderr.read():
                if self._wait_until_capturing(deadline):
                    return self
                break
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self._stop()
        self._stderr.seek(0)
        raise OracleError(f"tshark did not start: {self._stderr.read().decode(errors='replace').strip()}")

    def _wait_until_capturing(self, deadline: float) -> bool:
        """"Capturing on" comes before packets are really taken: probe the port until the file grows."""
        start = self.path.stat().st_size if self.path.exists() else 0
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                pass
            time.sleep(0.2)
            if self.path.exists() and self.path.stat().st_size > start:
                return True
        return False

    def _stop(self) -> str:
        if self._proc and self._proc.poll() is None:
            time.sleep(0.3)  # let the last packets reach the capture
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __exit__(self, *exc) -> None:
        self.log = self._stop()

    def dropped(self) -> int:
        """Packets the capture says it dropped (0 when it reports none)."""
        for line in getattr(self, "log", "").splitlines():
            if "dropped" in line:
                digits = [int(t) for t in line.replace("(", " ").split() if t.isdigit()]
                if digits:
                    return digits[0]
        return 0

    def streams(self) -> dict[tuple[int, int], TcpStream]:
        return reassemble(self.path, self.port)

    def cleanup(self) -> None:
        if self._tmp:
            self._tmp.cleanup()


def reassemble(pcap: str | os.PathLike, server_port: int) -> dict[tuple[int, int], TcpStream]:
    """(client_port, server_port) -> both directions' bytes, placed by TCP sequence number."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=;",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.seq_raw", "-e", "tcp.flags.syn", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True).stdout
    isn: dict[tuple[int, int], int] = {}
    segments: list[tuple[int, int, int, bytes]] = []
    for line in out.splitlines():
        src, dst, seq, syn, payload = (line.split(";") + [""] * 5)[:5]
        if not src:
            continue
        src, dst, seq = int(src), int(dst), int(seq)
        if syn in ("1", "True"):
            isn[(src, dst)] = seq + 1
        if payload:
            segments.append((src, dst, seq, bytes.fromhex(payload.replace(":", ""))))
    streams: dict[tuple[int, int], TcpStream] = {}
    for src, dst, seq, data in segments:
        if (src, dst) not in isn:
            continue  # connection began before the capture: not comparable
        client, server = (src, dst) if dst == server_port else (dst, src)
        s = streams.setdefault((client, server), TcpStream(client, server))
        buf = s.c2s if dst == server_port else s.s2c
        pos = (seq - isn[(src, dst)]) % (1 << 32)
        if len(buf) < pos + len(data):
            buf.extend(b"\0" * (pos + len(data) - len(buf)))
        buf[pos:pos + len(data)] = data
    return streams


def wire_events(pcap: str | os.PathLike, server_port: int) -> list:
    """The capture as the agent's stream events: one StreamData per TCP segment, at the packet's own time.

    Fed to the agent's pipeline (as a recording would be), it gives what the agent would report had it
    seen the wire instead of the syscalls: the truth for timing tests. Connections are named by the
    client's port (as the pid, too); segments of connections that began before the capture are left out.
    """
    from otel_kafka_ebpf.capture.streams import (
        ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
    )

    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=;", "-e", "frame.time_epoch",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.seq_raw", "-e", "tcp.flags.syn", "-e", "tcp.flags.fin",
         "-e", "tcp.payload"],
        capture_output=True, text=True, check=True).stdout
    isn: dict[tuple[int, int], int] = {}
    next_offset: dict[tuple[int, int], int] = {}
    events = []
    for line in out.splitlines():
        when, src, dst, seq, syn, fin, payload = (line.split(";") + [""] * 7)[:7]
        if not src:
            continue
        ts = int(round(float(when) * 1e9))
        src, dst, seq = int(src), int(dst), int(seq)
        client = src if dst == server_port else dst
        if syn in ("1", "True"):
            isn[(src, dst)] = seq + 1
            if dst == server_port:
                events.append(ConnectionOpened(client, ts, client, client, "wire", 0, 0, "127.0.0.1", client,
                                               "127.0.0.1", server_port, Role.CLIENT))
            continue
        if (src, dst) not in isn:
            continue
        if payload:
            data = bytes.fromhex(payload.replace(":", ""))
            direction = Direction.SEND if dst == server_port else Direction.RECV
            pos = (seq - isn[(src, dst)]) % (1 << 32)
            expected = next_offset.get((src, dst), 0)
            if pos + len(data) <= expected:
                continue  # a retransmission
            if pos < expected:
                data, pos = data[expected - pos:], expected
            elif pos > expected:  # a segment the capture dropped
                events.append(StreamGap(client, direction, ts, expected, pos - expected, GapReason.RINGBUF_FULL))
            events.append(StreamData(client, direction, ts, pos, data))
            next_offset[(src, dst)] = pos + len(data)
        if fin in ("1", "True") and dst == server_port:
            events.append(ConnectionClosed(client, ts))
    return events
