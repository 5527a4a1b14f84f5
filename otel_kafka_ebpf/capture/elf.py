"""Reading the ELF files a process maps: sections, function symbols, file offsets for uprobes.

    with ElfFile.open(path) as elf:
        sym = elf.function("SSL_write")        # Symbol(name, vaddr, size, local) or None
        off = elf.file_offset(sym.vaddr)       # where a uprobe on it goes
        code = elf.read(off, sym.size)         # the function's bytes

The file is mapped, not read: a library of 100 MB costs its page cache, and `contains()` tells in one scan
whether a name appears in it at all before its symbol tables are parsed. Only 64-bit little-endian files
(x86_64, aarch64) are read; anything else is an `ElfError` with one line of reason.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import NamedTuple

SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC = 2
STB_LOCAL = 0
PT_LOAD = 1
EM_X86_64, EM_AARCH64 = 62, 183


class ElfError(Exception):
    """The file is not an ELF file this reader takes; str() says why, in one line."""


class Section(NamedTuple):
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class Symbol(NamedTuple):
    name: str
    vaddr: int
    size: int
    local: bool


class ElfFile:
    def __init__(self, path: str, data: mmap.mmap, fd: int):
        self.path = path
        self._data = data
        self._fd = fd
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        self.machine = struct.unpack_from("<H", data, 0x12)[0]
        e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
        e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
        self._loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz) of PT_LOAD segments
        for i in range(e_phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", data, e_phoff + i * e_phentsize)
            if p_type == PT_LOAD:
                self._loads.append((p_vaddr, p_offset, p_filesz))
        raw = []
        if e_shoff and e_shoff + e_shnum * e_shentsize <= len(data):
            for i in range(e_shnum):
                raw.append(struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize))
        names = raw[e_shstrndx][4] if raw and e_shstrndx < len(raw) else 0
        self.sections = [Section(self._cstr(names, r[0]) if names else "", r[1], r[3], r[4], r[5], r[6], r[9])
                         for r in raw]
        self._functions: dict[str, Symbol] | None = None

    @classmethod
    def open(cls, path: str) -> "ElfFile":
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ElfError(f"cannot open it: {exc.strerror}") from None
        if os.fstat(fd).st_size < 64:
            os.close(fd)
            raise ElfError("not an ELF file (too short)")
        try:
            data = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise ElfError(f"cannot map it: {exc}") from None
        try:
            return cls(path, data, fd)
        except (ElfError, struct.error, IndexError) as exc:
            data.close()
            os.close(fd)
            raise ElfError(str(exc) if isinstance(exc, ElfError) else "a damaged ELF header") from None

    def close(self) -> None:
        if self._fd >= 0:
            self._data.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ElfFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- contents ----

    def contains(self, needle: bytes) -> bool:
        """Whether these bytes appear anywhere in the file (one scan, before parsing anything)."""
        return self._data.find(needle) >= 0

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset:offset + size]

    def has_symtab(self) -> bool:
        return any(s.type == SHT_SYMTAB for s in self.sections)

    def functions(self) -> dict[str, Symbol]:
        """Function symbols of .symtab and .dynsym by name (a defined one; .dynsym's wins: it is exported)."""
        if self._functions is None:
            out: dict[str, Symbol] = {}
            for kind in (SHT_SYMTAB, SHT_DYNSYM):
                for sec in self.sections:
                    if sec.type == kind and sec.link < len(self.sections):
                        out.update(self._symbols(sec, self.sections[sec.link].offset))
            self._functions = out
        return self._functions

    def function(self, name: str) -> Symbol | None:
        return self.lookup((name,)).get(name)

    def lookup(self, names) -> dict[str, Symbol]:
        """Just these function symbols (.dynsym's wins), without decoding every name of the tables: a library
        with tens of thousands of symbols answers in milliseconds (the attach races a process's first call)."""
        if self._functions is not None:
            return {n: self._functions[n] for n in names if n in self._functions}
        out: dict[str, Symbol] = {}
        data = self._data
        for kind in (SHT_SYMTAB, SHT_DYNSYM):
            for sec in self.sections:
                if sec.type != kind or sec.link >= len(self.sections) or (sec.entsize or 24) != 24:
                    continue
                strtab = self.sections[sec.link]
                table = data[strtab.offset:strtab.offset + strtab.size]
                wanted: dict[int, str] = {}
                for name in names:
                    needle = name.encode() + b"\0"
                    at = table.find(needle)
                    while at >= 0:  # every place the name ends a string (a linker may share tails)
                        wanted[at] = name
                        at = table.find(needle, at + 1)
                if not wanted:
                    continue
                end = min(sec.offset + sec.size, len(data))
                body = data[sec.offset:sec.offset + (end - sec.offset) // 24 * 24]
                for st_name, st_info, _other, st_shndx, st_value, st_size in struct.iter_unpack("<IBBHQQ", body):
                    name = wanted.get(st_name)
                    if name is None or st_info & 0xF != STT_FUNC or st_shndx == 0 or not st_value:
                        continue
                    # a shared tail: the string that starts there must be the whole name
                    if st_name and table[st_name - 1:st_name] not in (b"", b"\0"):
                        continue
                    out[name] = Symbol(name, st_value, st_size, (st_info >> 4) == STB_LOCAL)
        return out

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of a virtual address in a loaded segment (what a uprobe is attached at)."""
        for seg_vaddr, seg_off, filesz in self._loads:
            if seg_vaddr <= vaddr < seg_vaddr + filesz:
                return vaddr - seg_vaddr + seg_off
        return None

    # ---- internals ----

    def _cstr(self, table: int, at: int) -> str:
        start = table + at
        end = self._data.find(b"\0", start)
        return self._data[start:end if end >= 0 else start].decode(errors="replace")

    def _symbols(self, sec: Section, strtab: int) -> dict[str, Symbol]:
        out: dict[str, Symbol] = {}
        data, ent = self._data, sec.entsize or 24
        end = min(sec.offset + sec.size, len(data))
        for off in range(sec.offset, end - ent + 1, ent):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off)
            if st_info & 0xF != STT_FUNC or st_shndx == 0 or not st_name or not st_value:
                continue
            name = self._cstr(strtab, st_name)
            out[name] = Symbol(name, st_value, st_size, (st_info >> 4) == STB_LOCAL)
        return out
