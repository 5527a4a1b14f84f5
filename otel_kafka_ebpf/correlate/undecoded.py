"""TLS connections the agent sees but cannot read: reported, never silently absent.

The capture reports a connection whose client began a TLS handshake (`ConnectionOpened.tls == "undecoded"`)
when no TLS probe hands its plaintext over yet. Most are not Kafka (a process's HTTPS calls), and many are
decoded a moment later: a Go client's first `(*tls.Conn).Write` turns the connection into one whose
plaintext the Go probes give (a new open event on the same ports). What is left after GRACE_NS, from a
process that is a Kafka client (a plain-text Kafka connection seen from it, or Kafka named by its command
line, its service or the thread that connected: Java's clients name theirs kafka-producer-network-thread...),
is reported once: "TLS, not decoded", with the process and the peer. A process some of whose TLS connections
are decoded is not reported: the others are decoded at their next read or write (they began before the
library was probed). A Java client over TLS (its plaintext exists only inside the JVM) is the usual one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..capture.streams import ConnectionOpened

GRACE_NS = 2_000_000_000
MAX_PENDING = 4096


@dataclass(frozen=True)
class UndecodedTls:
    conn: ConnectionOpened
    service: str
    reason: str

    def to_dict(self) -> dict:
        c = self.conn
        return {"event": "tls_undecoded", "pid": c.pid, "comm": c.comm, "service": self.service,
                "peer": f"{c.remote_addr}:{c.remote_port}", "ts_ns": c.ts_ns, "reason": self.reason}

    def text(self) -> str:
        c = self.conn
        return (f"TLS, not decoded: pid {c.pid} ({self.service or c.comm}) -> {c.remote_addr}:{c.remote_port}: "
                f"{self.reason}")


class TlsConnections:
    """Counts connections by TLS stack, and tells which undecoded ones to report."""

    def __init__(self) -> None:
        self.by_stack: Counter = Counter()   # "openssl", "go", "undecoded" -> connections
        self.reported = 0
        self._pending: dict[int, tuple[ConnectionOpened, str, str]] = {}  # conn_id -> (open, service, reason)
        self._kafka_pids: set[int] = set()    # processes known to be Kafka clients
        self._decoded_pids: set[int] = set()  # processes with a TLS connection the probes decode

    def opened(self, event: ConnectionOpened, service: str = "", command: str = "", executable: str = "") -> None:
        if event.tls != "undecoded":
            self._kafka_pids.add(event.pid)
            if event.tls:
                self.by_stack[event.tls] += 1
                self._decoded_pids.add(event.pid)
            return
        self.by_stack["undecoded"] += 1
        if any("kafka" in s.lower() for s in (command, service, event.comm)):
            self._kafka_pids.add(event.pid)
        if len(self._pending) < MAX_PENDING:
            java = executable == "java" or command.split(" ", 1)[0].rsplit("/", 1)[-1] == "java"
            self._pending[event.conn_id] = (event, service, JAVA if java else UNPROBED)

    def due(self, now_ns: int) -> list[UndecodedTls]:
        """The undecoded connections whose grace is over: those of Kafka clients, to report."""
        out = []
        for conn_id, (event, service, reason) in list(self._pending.items()):
            if now_ns - event.ts_ns < GRACE_NS:
                continue
            del self._pending[conn_id]
            if event.pid in self._kafka_pids and event.pid not in self._decoded_pids:
                out.append(UndecodedTls(event, service, reason))
        self.reported += len(out)
        if len(self._kafka_pids) > MAX_PENDING:  # bounded: the oldest knowledge goes first
            self._kafka_pids.clear()
            self._decoded_pids.clear()
        return out


JAVA = "Java's TLS (JSSE) runs inside the JVM: no library the probes can see carries its plaintext"
UNPROBED = "no TLS library this process uses is probed (see `otel-kafka-ebpf doctor`)"
