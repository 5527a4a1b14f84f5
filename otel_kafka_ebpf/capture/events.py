"""Python mirror of bpf/capture.h: its structs (tests/unit/test_event_layout.py checks them against the object's
BTF), limits and enums (tests/unit/test_capture_constants.py checks them against the header). Other modules
take them from here."""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_uint8, c_uint16, c_uint32, c_uint64

CHUNK_SIZE = 16384
MAX_SKIPS = 64
COMM_LEN = 16
MAX_KAFKA_PORTS = 8
LAYOUT_OPS = 64
MAX_LAYOUTS = 64
MAX_DEPTH = 4
INFLIGHT = 8  # requests remembered per connection whose responses have a layout
RINGBUF_BYTES = 16 << 20  # the digest mode's ring buffer
MAX_PIDS = 4096  # processes a pid filter names

EV_OPEN, EV_DATA, EV_CLOSE, EV_EXIT, EV_EXEC_MAP = 1, 2, 3, 4, 5

GAP_BUDGET = 1 << 0
GAP_RINGBUF = 1 << 1
GAP_IOVEC = 1 << 2
GAP_USER_COPY = 1 << 3
GAP_UNSYNCED = 1 << 4
GAP_LOOP = 1 << 5
GAP_SENDFILE = 1 << 6
GAP_MISSED_RUN = 1 << 7

DATA_FRAME_START = 1 << 0

SKIP_RECORDS = 1  # enum oke_skip_reason
SKIP_SASL = 2
SKIP_HEADS = 3

MODE_DIGEST, MODE_FULL = 0, 1

COUNTERS = ("syscalls", "events", "bytes", "ringbuf_drops", "gap_bytes", "conn_kafka", "conn_other",
            "tracepoint_hits", "skipped_bytes", "tls_ops", "tls_no_fd", "tls_undecoded")

# enum oke_tls_stack: whose plaintext a connection's events carry
TLS_NONE, TLS_OPENSSL, TLS_GO, TLS_UNDECODED = 0, 1, 2, 3
TLS_STACKS = {TLS_NONE: "", TLS_OPENSSL: "openssl", TLS_GO: "go", TLS_UNDECODED: "undecoded"}
TLS_COOKIE_EX = 1 << 8
MAX_TLS_FILES = 1024


class OpenEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("family", c_uint16),
        ("role", c_uint8),
        ("tls", c_uint8),
        ("conn_id", c_uint64),
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("netns", c_uint32),
        ("local_port", c_uint16),
        ("remote_port", c_uint16),
        ("local_addr", c_uint8 * 16),
        ("remote_addr", c_uint8 * 16),
        ("comm", c_char * COMM_LEN),
    ]


class DataEventHeader(ctypes.Structure):
    """struct oke_data_event: followed by `len` payload bytes, then `n_skips` Skip entries."""

    _fields_ = [
        ("type", c_uint32),
        ("len", c_uint32),
        ("conn_id", c_uint64),
        ("ts_ns", c_uint64),
        ("offset", c_uint64),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("direction", c_uint8),
        ("gap_flags", c_uint8),
        ("flags", c_uint16),
        ("n_skips", c_uint16),
        ("skip_reason", c_uint8),
        ("pad0", c_uint8),
        ("last_ts_ns", c_uint64),
    ]


class Skip(ctypes.Structure):
    """struct oke_skip: `len` stream bytes not copied, before payload[at]."""

    _fields_ = [
        ("at", c_uint32),
        ("len", c_uint32),
    ]


class CloseEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("conn_id", c_uint64),
        ("ts_ns", c_uint64),
        ("send_bytes", c_uint64),
        ("recv_bytes", c_uint64),
        ("gap_flags", ctypes.c_uint8 * 2),
        ("_pad", ctypes.c_uint8 * 6),
    ]


class ExitEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("ts_ns", c_uint64),
    ]


class ExecMapEvent(ctypes.Structure):
    """A process mapped a file executable (struct oke_exit_event with type EV_EXEC_MAP)."""
    _fields_ = ExitEvent._fields_


class Config(ctypes.Structure):
    _fields_ = [
        ("frame_budget", c_uint32),
        ("filter_pids", c_uint32),
        ("cgroup_id", c_uint64),
        ("cgroup_level", c_uint32),
        ("ports_only", c_uint32),
        ("kafka_ports", c_uint16 * MAX_KAFKA_PORTS),
        ("self_tgid", c_uint32),
        ("server_side", c_uint32),
        ("capture_mode", c_uint32),
        ("record_prefix", c_uint32),
        ("wakeup_bytes", c_uint32),
        ("refuse_walker", c_uint32),
    ]


class Layout(ctypes.Structure):
    """struct oke_layout: the ops of one digest layout (otel_kafka_ebpf/capture/layouts.py)."""

    _fields_ = [
        ("op", c_uint8 * LAYOUT_OPS),
        ("arg", c_uint8 * LAYOUT_OPS),
    ]


def layout_key(is_response: bool, api_key: int, version: int) -> int:
    """OKE_LAYOUT_KEY: the index of the layout_of map."""
    return (int(is_response) & 1) << 13 | (api_key & 127) << 6 | (version & 63)


# C struct name -> mirror, for the layout test
MIRRORS = {
    "oke_open_event": OpenEvent,
    "oke_data_event": DataEventHeader,
    "oke_skip": Skip,
    "oke_close_event": CloseEvent,
    "oke_exit_event": ExitEvent,
    "oke_config": Config,
    "oke_layout": Layout,
}
