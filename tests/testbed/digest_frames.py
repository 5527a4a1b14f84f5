"""Frames of every digest layout, made up from the layout itself, with the ranges a digest must skip.

`conversation(seed)` gives a client's requests and a broker's responses covering every layout of
`otel_kafka_ebpf.capture.layouts` (Produce requests v0-13, Fetch responses v4-18, ShareFetch
responses v0-2, SASL frames with a v0 handshake's raw tokens): empty, null and repeated arrays,
tagged fields, strings, record batches whole, cut short and compressed. The generator knows where it
put each batch's records, so it is the ground truth for the Python twin of the kernel's walk (unit
test) and, sent through a real socket, for the kernel itself (integration test).

    python -m tests.testbed.digest_frames PORT SEED   # serve and play the conversation on loopback
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import threading
from typing import NamedTuple

from otel_kafka_ebpf.capture import layouts as L


class Frame(NamedTuple):
    data: bytes  # the whole frame, size field included
    skips: tuple[tuple[int, int], ...]  # (offset in data, length) a digest must skip


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Builder:
    def __init__(self, rng: random.Random, record_prefix: int) -> None:
        self.rng = rng
        self.out = bytearray()
        self.skips: list[tuple[int, int]] = []
        self.record_prefix = record_prefix

    def raw(self, b: bytes) -> None:
        self.out += b

    def random(self, n: int) -> None:
        self.out += bytes(self.rng.randrange(256) for _ in range(n))

    def records(self, flex: bool) -> None:
        rng = self.rng
        choice = rng.random()
        if choice < 0.1:  # null
            self.raw(b"\0" if flex else struct.pack(">i", -1))
            return
        field = bytearray()
        field_skips = []
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            records = rng.choice((0, 1, 7, 60, 300, 1500))
            codec = rng.choice((0, 0, 1, 3, 4))
            header = bytearray(struct.pack(">qi", rng.randrange(1 << 40), 49 + records))
            header += struct.pack(">ib", rng.randrange(1 << 20), 2) + bytes(4)  # leader epoch, magic, crc
            header += struct.pack(">hi", codec | rng.choice((0, 0x10, 0x20)), rng.randrange(100))
            header += struct.pack(">qqqhii", 1, 2, -1, -1, -1, rng.randrange(1, 100))
            assert len(header) == 61
            body = bytes(rng.randrange(256) for _ in range(records))
            prefix = min(self.record_prefix, records) if self.record_prefix and codec == 0 else 0
            if records - prefix:
                field_skips.append((len(field) + 61 + prefix, records - prefix))
            field += header + body
        if field and rng.random() < 0.3:  # a fetch cut the last batch short
            cut = rng.randrange(1, len(field))
            field = field[:cut]
            field_skips = [(at, min(n, cut - at)) for at, n in field_skips if at < cut]
        self.raw(_uvarint(len(field) + 1) if flex else struct.pack(">i", len(field)))
        base = len(self.out)
        self.skips.extend((base + at, n) for at, n in field_skips)
        self.raw(bytes(field))


def _body(ops: list, b: _Builder, depth: int = 0) -> None:
    rng = b.rng
    pc = 0
    while pc < len(ops):
        op, arg = ops[pc]
        if op == L.OP_COPY:
            b.random(arg)
        elif op == L.OP_STR16:
            n = rng.choice((-1, 0, 3, 17))
            b.raw(struct.pack(">h", n))
            b.random(max(n, 0))
        elif op == L.OP_CSTR:
            n = rng.choice((0, 1, 4, 30))
            b.raw(_uvarint(n))
            b.random(max(n - 1, 0))
        elif op == L.OP_TAGS:
            tags = rng.choice((0, 0, 1, 2))
            b.raw(_uvarint(tags))
            for t in range(tags):
                size = rng.choice((0, 3, 200))  # 200: a two-byte varint
                b.raw(_uvarint(t) + _uvarint(size))
                b.random(size)
        elif op in (L.OP_ARRAY, L.OP_CARRAY):
            count = rng.choice((-1, 0, 1, 2, 3)) if depth < 3 else rng.choice((0, 1))
            if op == L.OP_ARRAY:
                b.raw(struct.pack(">i", count))
            else:
                b.raw(_uvarint(count + 1))
            inner = ops[pc + 1:pc + 1 + arg]
            for _ in range(max(count, 0)):
                _body(inner, b, depth + 1)
            pc += arg + 2
            continue
        elif op in (L.OP_RECORDS, L.OP_CRECORDS):
            b.records(op == L.OP_CRECORDS)
        elif op == L.OP_SKIP_REST:
            start = len(b.out)
            b.random(rng.choice((0, 5, 40)))
            if len(b.out) > start:
                b.skips.append((start, len(b.out) - start))
            return
        elif op == L.OP_STOP:
            return
        pc += 1


def _frame(head: bytes, ops: list | None, rng: random.Random, record_prefix: int) -> Frame:
    b = _Builder(rng, record_prefix)
    b.raw(head)
    if ops is None:
        b.random(rng.choice((0, 10)))
    else:
        _body(ops, b)
    size = struct.pack(">i", len(b.out))
    return Frame(size + bytes(b.out), tuple((at + 4, n) for at, n in b.skips))


def _raw_token(rng: random.Random, n: int) -> Frame:
    if n == 0:
        return Frame(struct.pack(">i", 0), ())
    return Frame(struct.pack(">i", n) + bytes(rng.randrange(256) for _ in range(n)), ((4, n),))


def conversation(seed: int, record_prefix: int = 0) -> tuple[list[Frame], list[Frame], list[tuple]]:
    """(requests, responses, (api key, version) of each exchange), one exchange per layout and more."""
    rng = random.Random(seed)
    table = L.layouts_for("digest")
    apis = sorted({(api, version) for _, api, version in table})
    requests: list[Frame] = []
    responses: list[Frame] = []
    exchanges = []
    corr = 100
    for api, version in apis:
        for _ in range(2):
            corr += rng.randrange(1, 5)
            client = b"digest-frames"
            head = struct.pack(">hhih", api, version, corr, len(client)) + client
            req_ops = table.get((False, api, version))
            if req_ops is not None:
                # the layout starts at the client id: it makes its own
                requests.append(_frame(struct.pack(">hhi", api, version, corr), req_ops, rng, record_prefix))
            else:
                requests.append(_frame(head + b"\0" * 4, None, rng, record_prefix))
            responses.append(_frame(struct.pack(">i", corr), table.get((True, api, version)), rng, record_prefix))
            exchanges.append((api, version))
            if (api, version) == (L.SASL_HANDSHAKE, 0):  # raw tokens follow, one each way
                requests.append(_raw_token(rng, 40))
                responses.append(_raw_token(rng, 0))
                exchanges.append(("raw", 0))
    return requests, responses, exchanges


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut in pieces of random sizes: fields split across syscalls."""
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice((1, 2, 3, 5, 8, 61, 100, 4096, 1 << 20))
        out.append(data[pos:pos + n])
        pos += n
    return out


def play(seed: int, record_prefix: int = 0) -> None:
    """A server thread and a client on loopback, one exchange after the other: the client writes each
    request in pieces, the server reads it and writes the response in pieces, the client reads it in
    pieces of random sizes."""
    requests, responses, _ = conversation(seed, record_prefix)
    listener = socket.create_server(("127.0.0.1", 0))

    def read_exactly(conn: socket.socket, n: int, rng: random.Random) -> None:
        while n:
            chunk = conn.recv(min(n, rng.choice((1, 4, 7, 64, 1 << 16))))
            if not chunk:
                raise ConnectionError("closed early")
            n -= len(chunk)

    def serve() -> None:
        conn, _ = listener.accept()
        rng = random.Random(seed + 1)
        for request, response in zip(requests, responses):
            read_exactly(conn, len(request.data), rng)
            for piece in _chunks(response.data, rng):
                conn.sendall(piece)
        conn.close()

    server = threading.Thread(target=serve)
    server.start()
    rng = random.Random(seed + 2)
    s = socket.create_connection(listener.getsockname())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, (request, response) in enumerate(zip(requests, responses)):
        # the first request in one write: the kernel tells Kafka from its first bytes
        for piece in _chunks(request.data, rng) if i else [request.data]:
            s.sendall(piece)
        read_exactly(s, len(response.data), rng)
    server.join()
    s.close()


if __name__ == "__main__":
    sys.stdin.readline()  # start when told (the agent is attached)
    play(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
