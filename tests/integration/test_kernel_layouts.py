"""What the loader writes into the kernel, and reads back out of it, sits where the object's BTF says.

- .rodata: the settings (`cfg`) land at their BTF offset and every other byte keeps the value the compiler gave it:
  on an object whose .rodata holds non-zero constants around cfg, and on the agent's own object.
- struct conn: the loader finds a live connection's entry by its process, reads the conn_id its open event
  carried, and removes it (the cleanup after a process's exit).
"""

import ctypes
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from otel_kafka_ebpf.capture import events as ev
from otel_kafka_ebpf.capture.libbpf import datasec_variables, lib, map_lookup
from otel_kafka_ebpf.capture.loader import CaptureProgram, CaptureSettings, find_map, object_path, write_rodata
from tests.unit.test_headroom import PINNED_CLANG

pytestmark = [pytest.mark.bpf, pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")]

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
VECTORS = os.path.join(ROOT, "tests", "vectors", "bpf")


def _initial_rodata(path: str) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """.rodata as the compiler wrote it, and where its BTF puts each variable (the object opened, not loaded)."""
    L = lib()
    obj = L.bpf_object__open_file(path.encode(), None)
    try:
        size = ctypes.c_size_t()
        at = L.bpf_map__initial_value(find_map(obj, ".rodata"), ctypes.byref(size))
        return ctypes.string_at(at, size.value), datasec_variables(obj, ".rodata")
    finally:
        L.bpf_object__close(obj)


def _loaded_rodata(obj) -> bytes:
    """.rodata as the kernel holds it after load: its map's one value, looked up through the kernel."""
    L = lib()
    rodata = find_map(obj, ".rodata")
    value = (ctypes.c_uint8 * L.bpf_map__value_size(rodata))()
    assert map_lookup(L.bpf_map__fd(rodata), ctypes.c_uint32(0), value)
    return bytes(value)


def _settings() -> ev.Config:
    cfg = ev.Config()
    cfg.frame_budget = 4242
    cfg.cgroup_id = 0x1122334455667788
    cfg.kafka_ports[7] = 9092  # the last of the array: its end is the struct's, not offset 0's
    cfg.self_tgid = os.getpid()
    cfg.refuse_walker = 1
    return cfg


def test_settings_land_at_their_btf_offset_and_the_constants_around_them_survive(tmp_path):
    path = str(tmp_path / "rodata_neighbours.bpf.o")
    subprocess.run([PINNED_CLANG, "-g", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    f"-I{os.path.join(ROOT, 'bpf')}", "-c", os.path.join(VECTORS, "rodata_neighbours.bpf.c"),
                    "-o", path], check=True, capture_output=True)
    initial, places = _initial_rodata(path)
    (before_at, _), (cfg_at, cfg_size), (after_at, _) = places["before_cfg"], places["cfg"], places["after_cfg"]
    # the neighbours are not zero, and cfg is not at offset 0: a blind write over offset 0 would show
    assert initial[before_at:before_at + 8] == struct.pack("<Q", 0x0123456789ABCDEF)
    assert initial[after_at:after_at + 12] == struct.pack("<3I", 0xDEADBEEF, 0xFEEDFACE, 0x0BADF00D)
    assert cfg_at != 0 and cfg_size == ctypes.sizeof(ev.Config)
    assert ev.Config.from_buffer_copy(initial, cfg_at).frame_budget == 7  # the source's own default

    cfg = _settings()
    L = lib()
    obj = L.bpf_object__open_file(path.encode(), None)
    try:
        write_rodata(obj, {"cfg": cfg})
        L.bpf_object__load(obj)
        loaded = _loaded_rodata(obj)
    finally:
        L.bpf_object__close(obj)
    assert loaded == initial[:cfg_at] + bytes(cfg) + initial[cfg_at + cfg_size:]


def test_the_agent_s_object_keeps_its_rodata_but_for_the_settings():
    initial, places = _initial_rodata(object_path("capture"))
    at, size = places["cfg"]
    settings = CaptureSettings(frame_budget=4242, kafka_ports=(9092, 19092), walker="heads")
    with CaptureProgram(settings, lambda event: None).open() as prog:
        loaded = _loaded_rodata(prog._obj)
    assert len(loaded) == len(initial)
    cfg = ev.Config.from_buffer_copy(loaded, at)
    assert (cfg.frame_budget, list(cfg.kafka_ports[:3]), cfg.self_tgid) == (4242, [9092, 19092, 0], os.getpid())
    assert loaded[:at] + loaded[at + size:] == initial[:at] + initial[at + size:]


def test_a_live_connection_s_entry_is_found_by_its_process_and_forgotten():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        seen: list = []
        with CaptureProgram(CaptureSettings(kafka_ports=(port,), ports_only=True), seen.append).open() as prog:
            # a client in a process of its own sends a few bytes and waits, its connection open, to be told to end
            child = subprocess.Popen([sys.executable, "-c", (
                "import socket, sys\n"
                f"s = socket.create_connection(('127.0.0.1', {port}))\n"
                "s.sendall(b'\\0\\0\\0\\x0a' + bytes(10))\n"
                "sys.stdin.read()\n")], stdin=subprocess.PIPE)
            peer = None
            try:
                peer, _ = srv.accept()
                peer.recv(100)
                opened = None
                deadline = time.monotonic() + 10
                while opened is None and time.monotonic() < deadline:
                    prog.poll(50)
                    opened = next((e for e in seen if isinstance(e, ev.OpenEvent) and e.pid == child.pid), None)
                assert opened is not None, "no open event for the child's connection"
                entries = prog._conns_of(child.pid)
                assert [conn_id for _, conn_id in entries] == [opened.conn_id]
                assert opened.conn_id not in [conn_id for _, conn_id in prog._conns_of(child.pid + 1)]
                assert prog.forget_process(child.pid) == 1
                assert prog._conns_of(child.pid) == []
            finally:
                child.stdin.close()
                child.wait(timeout=10)
                if peer is not None:
                    peer.close()
