"""Python mirror of bpf/capture.h (tests/unit/test_event_layout.py checks it against the object's BTF)."""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_uint8, c_uint16, c_uint32, c_uint64

CHUNK_SIZE = 16384
COMM_LEN = 16
MAX_KAFKA_PORTS = 8

EV_OPEN, EV_DATA, EV_CLOSE, EV_EXIT = 1, 2, 3, 4

GAP_BUDGET = 1 << 0
GAP_RINGBUF = 1 << 1
GAP_IOVEC = 1 << 2
GAP_USER_COPY = 1 << 3
GAP_UNSYNCED = 1 << 4
GAP_LOOP = 1 << 5
GAP_SENDFILE = 1 << 6

DATA_FRAME_START = 1 << 0

COUNTERS = ("syscalls", "events", "bytes", "ringbuf_drops", "gap_bytes", "conn_kafka", "conn_other",
            "tracepoint_hits")


class OpenEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("family", c_uint16),
        ("role", c_uint8),
        ("pad0", c_uint8),
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
    """struct oke_data_event without its payload (which follows, `len` bytes)."""

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
        ("pad1", c_uint32),
    ]


class CloseEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("conn_id", c_uint64),
        ("ts_ns", c_uint64),
        ("send_bytes", c_uint64),
        ("recv_bytes", c_uint64),
    ]


class ExitEvent(ctypes.Structure):
    _fields_ = [
        ("type", c_uint32),
        ("pid", c_uint32),
        ("ts_ns", c_uint64),
    ]


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
    ]


# C struct name -> mirror, for the layout test
MIRRORS = {
    "oke_open_event": OpenEvent,
    "oke_close_event": CloseEvent,
    "oke_exit_event": ExitEvent,
    "oke_config": Config,
}
DATA_EVENT_SIZE = ctypes.sizeof(DataEventHeader) + CHUNK_SIZE
