"""The Python mirror of bpf/capture.h agrees with the compiled object's BTF: sizes and field offsets. Structs Python
has no mirror of (struct conn, which the loader reads) are read through the object's BTF, by a reader checked here."""

import ctypes
import re
import shutil
import subprocess

import pytest

from otel_kafka_ebpf.capture import events as ev
from otel_kafka_ebpf.capture.libbpf import lib, struct_fields
from otel_kafka_ebpf.capture.loader import DATA_HEADER, object_path

pytestmark = pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is installed by make apt-deps")


def _btf_structs() -> dict[str, tuple[int, dict[str, int]]]:
    """struct name -> (size, {field: byte offset}) from `bpftool btf dump` of the object."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", object_path("capture")],
                         capture_output=True, text=True, check=True).stdout
    structs: dict[str, tuple[int, dict[str, int]]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"\[\d+\] STRUCT '(\w+)' size=(\d+)", line)
        if m:
            current = m.group(1)
            structs[current] = (int(m.group(2)), {})
            continue
        m = re.match(r"\s+'(\w+)' type_id=\d+ bits_offset=(\d+)", line)
        if m and current:
            structs[current][1][m.group(1)] = int(m.group(2)) // 8
        elif not line.startswith("\t"):
            current = None
    return structs


@pytest.mark.parametrize("name", sorted(ev.MIRRORS))
def test_mirror_matches_btf(name):
    structs = _btf_structs()
    assert name in structs, f"{name} not in the object's BTF"
    size, fields = structs[name]
    mirror = ev.MIRRORS[name]
    assert ctypes.sizeof(mirror) == size
    for field_name, _ in mirror._fields_:
        assert getattr(mirror, field_name).offset == fields[field_name], field_name


def test_data_event_header_is_what_the_reader_unpacks():
    """The payload follows the header directly (the loader unpacks the header with one struct)."""
    size, _ = _btf_structs()["oke_data_event"]
    assert size == DATA_HEADER.size == ctypes.sizeof(ev.DataEventHeader)


@pytest.fixture(scope="module")
def opened():
    """The object as libbpf opens it (no kernel involved): what the loader reads BTF from."""
    L = lib()
    obj = L.bpf_object__open_file(object_path("capture").encode(), None)
    yield obj
    L.bpf_object__close(obj)


@pytest.mark.parametrize("name", sorted(ev.MIRRORS) + ["conn"])
def test_the_loader_s_btf_reader_agrees_with_bpftool(name, opened):
    """struct_fields (how the loader finds struct conn's fields) gives bpftool's offsets, and the mirrors' sizes."""
    _, offsets = _btf_structs()[name]
    fields = struct_fields(opened, name)
    assert {field: at for field, (at, _) in fields.items()} == offsets
    mirror = ev.MIRRORS.get(name)
    for field_name, _ in mirror._fields_ if mirror else ():
        assert fields[field_name][1] == getattr(mirror, field_name).size, field_name


def test_struct_conn_holds_what_the_loader_reads_of_it(opened):
    """The conns map's values are struct conn, whose conn_id and tgid are as wide as the events' conn_id and pid."""
    size, _ = _btf_structs()["conn"]
    L = lib()
    assert L.bpf_map__value_size(L.bpf_object__find_map_by_name(opened, b"conns")) == size
    fields = struct_fields(opened, "conn")
    assert fields["conn_id"][1] == ev.OpenEvent.conn_id.size
    assert fields["tgid"][1] == ev.OpenEvent.pid.size
    assert struct_fields(opened, "no_such_struct") == {}
