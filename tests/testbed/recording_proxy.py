"""A TCP proxy that records every byte it forwards, as a capture recording.

Put it in front of the test broker (the broker advertises the proxy's port, so every client
connection passes through it). Each accepted connection is recorded from the client's point of
view: `ConnectionOpened` (role CLIENT, the client's pid and comm found from /proc through the
socket inode), `StreamData` SEND for client -> broker bytes and RECV for broker -> client bytes,
in stream order with exact offsets and no gaps, then `ConnectionClosed`. A chunk is recorded
before it is forwarded, so a request is always in the recording before its response.

This is the independent oracle the capture tests compare the BPF capture against.

    with RecordingProxy(path="out.rec.gz") as proxy:        # listens on a free port
        with KafkaBroker(advertised_port=proxy.port) as kb:
            proxy.target = ("127.0.0.1", kb.port)
            ...

    python -m tests.testbed.recording_proxy --listen 9093 --target 127.0.0.1:9092 --out out.rec.gz
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from pathlib import Path

from otel_kafka_ebpf.capture.recording import RecordingWriter
from otel_kafka_ebpf.capture.streams import (
    ConnectionClosed, ConnectionOpened, Direction, Role, StreamData, StreamEvent,
)

CHUNK = 1 << 16


def _proc_net_inode(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """Inode of the client's socket: local address `client`, remote address `server` (IPv4).

    A dual-stack client (the JVM) holds an AF_INET6 socket, listed in /proc/net/tcp6 with
    IPv4-mapped addresses (::ffff:a.b.c.d).
    """
    def hex4(addr: tuple[str, int]) -> str:
        ip = socket.inet_aton(addr[0])
        return f"{int.from_bytes(ip, 'little'):08X}:{addr[1]:04X}"

    def hex6(addr: tuple[str, int]) -> str:
        ip = socket.inet_pton(socket.AF_INET6, "::ffff:" + addr[0])
        words = "".join(f"{int.from_bytes(ip[i:i + 4], 'little'):08X}" for i in range(0, 16, 4))
        return f"{words}:{addr[1]:04X}"

    for table, fmt in (("/proc/net/tcp", hex4), ("/proc/net/tcp6", hex6)):
        want_local, want_remote = fmt(client), fmt(server)
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[1] == want_local and parts[2] == want_remote:
                        return int(parts[9])
        except OSError:
            continue
    return None


def find_client_pid(client: tuple[str, int], server: tuple[str, int]) -> tuple[int, str]:
    """(pid, comm) of the process holding the client end of a loopback connection, else (0, "")."""
    inode = _proc_net_inode(client, server)
    if not inode:
        return 0, ""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) == target:
                        pid = int(entry.name)
                        return pid, Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
        except OSError:
            continue
    return 0, ""


class RecordingProxy:
    """Forward connections on `port` to `target`, recording them to `path` and/or `events`."""

    def __init__(self, target: tuple[str, int] | None = None, *, listen_port: int = 0,
                 path: str | os.PathLike | None = None, keep_events: bool = True,
                 host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.path = path
        self.keep_events = keep_events
        self.events: list[StreamEvent] = []
        self._writer = RecordingWriter(path, source="recording_proxy") if path else None
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, listen_port))
        self.port = self._listener.getsockname()[1]
        self._next_id = 1
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="recording-proxy", daemon=True)

    def start(self) -> "RecordingProxy":
        self._acceptor.start()
        return self

    def __enter__(self) -> "RecordingProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in list(self._threads) + [self._acceptor]:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every proxied connection has closed (and its close is recorded)."""
        deadline = time.monotonic() + timeout
        while self.active_connections:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def take_events(self) -> list[StreamEvent]:
        """The events recorded so far, removed from `events`."""
        with self._lock:
            events, self.events = self.events, []
        return events

    def _record(self, event: StreamEvent) -> None:
        with self._lock:
            if self.keep_events:
                self.events.append(event)
            if self._writer is not None:
                self._writer.write(event)

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, addr = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client, addr), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket, addr: tuple[str, int]) -> None:
        if self.target is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server_addr = client.getsockname()[:2]
        pid, comm = find_client_pid(addr[:2], server_addr)
        with self._lock:
            conn_id = self._next_id
            self._next_id += 1
            self._sockets.update((client, upstream))
        self._record(ConnectionOpened(conn_id, time.time_ns(), pid, 0, comm, 0, 0, addr[0], addr[1],
                                      server_addr[0], server_addr[1], Role.CLIENT))
        back = threading.Thread(target=self._pump, args=(upstream, client, conn_id, Direction.RECV), daemon=True)
        back.start()
        self._pump(client, upstream, conn_id, Direction.SEND)
        back.join()
        with self._lock:
            self._sockets.discard(client)
            self._sockets.discard(upstream)
            event = ConnectionClosed(conn_id, time.time_ns())
            if self.keep_events:
                self.events.append(event)
            if self._writer is not None:
                self._writer.write(event)
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, conn_id: int, direction: Direction) -> None:
        offset = 0
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            self._record(StreamData(conn_id, direction, time.time_ns(), offset, data))
            offset += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recording_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--target", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--out", required=True, help="recording file to write")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = RecordingProxy((host, int(port)), listen_port=args.listen, path=args.out, keep_events=False)
    proxy.start()
    print(f"recording 127.0.0.1:{proxy.port} -> {args.target} into {args.out}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
