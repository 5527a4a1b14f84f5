"""TLS connections the agent sees but cannot read: reported, never silently absent.

The capture reports a connection whose client began a TLS handshake (`ConnectionOpened.tls == "undecoded"`)
when no TLS probe hands its plaintext over yet. Most are not Kafka (a process's HTTPS calls), and many are
decoded a moment later: a Go client's first `(*tls.Conn).Write` turns the connection into one whose
plaintext the Go probes give (a new open event on the same ports). What is left after GRACE_NS, from a
process that is a Kafka client (a Kafka connection seen from it, its command line names Kafka, or the peer's
port is one the user named Kafka's), is reported once: "TLS, not decoded", with the process and the peer.
A Java client over TLS (its plaintext exists only inside the JVM) is the usual one.
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

    def __init__(self, kafka_ports: tuple[int, ...] = ()) -> None:
        self.kafka_ports = set(kafka_ports)
        self.by_stack: Counter = Counter()   # "openssl", "go", "undecoded" -> connections
        self.reported = 0
        self._pending: dict[int, tuple[ConnectionOpened, str, bool]] = {}  # conn_id -> (open, service, suspect)
        self._kafka_pids: set[int] = set()

    def opened(self, event: ConnectionOpened, service: str = "", command: str = "") -> None:
        if event.tls != "undecoded":
            self._kafka_pids.add(event.pid)
            if event.tls:
                self.by_stack[event.tls] += 1
                for conn_id, (old, _, _) in list(self._pending.items()):  # the same connection, now decoded
                    if (old.pid, old.local_port, old.remote_port) == (event.pid, event.local_port, event.remote_port):
                        del self._pending[conn_id]
            return
        self.by_stack["undecoded"] += 1
        if len(self._pending) < MAX_PENDING:
            suspect = event.remote_port in self.kafka_ports or "kafka" in command.lower()
            self._pending[event.conn_id] = (event, service, suspect)

    def due(self, now_ns: int) -> list[UndecodedTls]:
        """The undecoded connections whose grace is over: those of Kafka clients, to report."""
        out = []
        for conn_id, (event, service, suspect) in list(self._pending.items()):
            if now_ns - event.ts_ns < GRACE_NS:
                continue
            del self._pending[conn_id]
            if suspect or event.pid in self._kafka_pids:
                out.append(UndecodedTls(event, service, _reason(event)))
        self.reported += len(out)
        return out


def _reason(event: ConnectionOpened) -> str:
    if event.comm.startswith("java") or "java" in event.comm.lower():
        return "Java's TLS (JSSE) runs inside the JVM: no library the probes can see carries its plaintext"
    return "no TLS library this process uses is probed (see `otel-kafka-ebpf doctor`)"
