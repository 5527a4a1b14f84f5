"""A TCP proxy in front of a broker that damages what the broker answers to the agent's own lookups.

Clients' connections pass untouched. A connection whose requests carry the agent's lookup client id
(otel_kafka_ebpf.discovery.CLIENT_ID) gets its ApiVersions answered as the broker answers it, and its
Metadata and ListOffsets responses damaged as `mode` says:

- "garbage": the body after the correlation id replaced by as many 0xff bytes (lengths of -1, varints that
  never end);
- "short": the size field and half the frame sent, then the connection closed (a short read);
- "cut": the size field says the frame ends 2 bytes after the correlation id (a body cut short).

    with GarbleProxy() as proxy:
        with KafkaBroker(advertised_port=proxy.port) as kb:
            proxy.target = ("127.0.0.1", kb.port)
            proxy.mode = "cut"
            ...
            proxy.damaged  # {"cut": n}
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter

from otel_kafka_ebpf.discovery import CLIENT_ID

MODES = ("garbage", "short", "cut")
DAMAGED_APIS = (2, 3)  # ListOffsets, Metadata


def _read_frame(sock: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    size = struct.unpack(">i", head)[0]
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(65536, size - len(body)))
        if not chunk:
            return None
        body += chunk
    return head + bytes(body)



def _shut(*socks: socket.socket) -> None:
    """Both ends of a proxied connection, whichever side ended it."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class GarbleProxy:
    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.mode = "garbage"
        self.damaged: Counter = Counter()
        self.lookups = 0  # connections of the agent's lookup seen
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "GarbleProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        asked: dict[int, int] = {}  # correlation id -> api key, of a lookup connection
        state = {"lookup": False}
        threading.Thread(target=self._answers, args=(server, client, asked, state), daemon=True).start()
        try:
            while True:
                frame = _read_frame(client)
                if frame is None:
                    break
                api, corr, id_len = struct.unpack_from(">hxxih", frame, 4)
                if frame[14:14 + max(id_len, 0)] == CLIENT_ID.encode():
                    if not state["lookup"]:
                        state["lookup"] = True
                        with self._lock:
                            self.lookups += 1
                    asked[corr] = api
                server.sendall(frame)
        except OSError:
            pass
        finally:
            _shut(client, server)

    def _answers(self, server: socket.socket, client: socket.socket, asked: dict, state: dict) -> None:
        try:
            while True:
                frame = _read_frame(server)
                if frame is None:
                    break
                corr = struct.unpack_from(">i", frame, 4)[0]
                if not state["lookup"] or asked.pop(corr, None) not in DAMAGED_APIS:
                    client.sendall(frame)
                    continue
                mode = self.mode
                with self._lock:
                    self.damaged[mode] += 1
                if mode == "garbage":
                    client.sendall(frame[:8] + b"\xff" * (len(frame) - 8))
                elif mode == "short":
                    client.sendall(frame[:len(frame) // 2])
                    break
                else:
                    client.sendall(struct.pack(">i", 6) + frame[4:10])
        except OSError:
            pass
        finally:
            _shut(client, server)
