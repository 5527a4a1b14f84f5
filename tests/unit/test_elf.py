"""capture/elf.py on real files: the TLS libraries the probes attach to, found by symbol, and bad files refused in
one line."""

from __future__ import annotations

import glob
import os

import pytest

from otel_kafka_ebpf.capture.elf import ElfError, ElfFile
from otel_kafka_ebpf.capture.tls import OPENSSL_ENTRIES

LIBSSL = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libssl.so.3*") + glob.glob("/usr/lib/aarch64-linux-gnu/libssl.so.3*"))
RDKAFKA = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.__file__)), "**", "confluent_kafka.libs",
                                        "librdkafka*.so*"), recursive=True))


@pytest.mark.parametrize("path", (LIBSSL[:1] + RDKAFKA[:1]) or [pytest.param("", marks=pytest.mark.skip("no libssl"))])
def test_lookup_finds_what_the_whole_table_holds(path):
    with ElfFile.open(path) as elf:
        quick = elf.lookup(OPENSSL_ENTRIES)
        whole = {n: s for n, s in elf.functions().items() if n in OPENSSL_ENTRIES}
        assert quick == whole and {"SSL_read", "SSL_write"} <= set(quick)
        for sym in quick.values():
            off = elf.file_offset(sym.vaddr)
            assert off is not None and 0 < off < os.path.getsize(path)
            assert elf.read(off, 4) != b"\0\0\0\0"  # the function's first bytes, not padding


def test_shared_and_linked_in_openssl_are_told_apart():
    if not LIBSSL:
        pytest.skip("no libssl")
    with ElfFile.open(LIBSSL[0]) as elf:
        assert not elf.lookup(("SSL_write",))["SSL_write"].local  # exported from libssl
    for path in RDKAFKA[:1]:
        with ElfFile.open(path) as elf:
            assert elf.lookup(("SSL_write",))["SSL_write"].local  # linked into librdkafka, in .symtab only


@pytest.mark.parametrize("content, why", [(b"", "not an ELF file"), (b"\x7fELF" + b"\x01" * 60, "64-bit"),
                                          (b"#!/bin/sh\necho hi\n" * 8, "not an ELF file")])
def test_bad_files_are_one_line(tmp_path, content, why):
    path = tmp_path / "f"
    path.write_bytes(content)
    with pytest.raises(ElfError, match=why):
        ElfFile.open(str(path))


def test_a_truncated_library_is_refused_or_has_no_symbols(tmp_path):
    if not LIBSSL:
        pytest.skip("no libssl")
    data = open(LIBSSL[0], "rb").read()
    for cut in (64, 4096, len(data) // 2):
        path = tmp_path / f"cut{cut}"
        path.write_bytes(data[:cut])
        try:
            with ElfFile.open(str(path)) as elf:
                elf.lookup(OPENSSL_ENTRIES)  # whatever it finds, it does not raise
        except ElfError:
            pass
