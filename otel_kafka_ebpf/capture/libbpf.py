"""Thin ctypes bindings to the system libbpf (Debian `libbpf1`).

The C signatures are one table of data; two error checkers cover libbpf's conventions (a negative
errno as the return value; NULL with errno set). libbpf's own log lines are collected, so an error
raised here carries libbpf's explanation (a verifier log, a missing BTF type) in its message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections import deque
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_size_t, c_uint32, c_void_p

_NAMES = ("libbpf.so.1", "libbpf.so.0", "libbpf.so")


class LibbpfError(OSError):
    """A libbpf call failed; str() is one line: what failed, errno text, libbpf's last words."""

    def __init__(self, call: str, err: int, log: str = ""):
        self.call = call
        msg = f"{call}: {os.strerror(err)}"
        if log:
            msg += f" (libbpf: {log})"
        super().__init__(err, msg)

    def __str__(self) -> str:
        return self.args[1]


def find_libbpf() -> tuple[str, str]:
    lib = _load()
    return lib._name, _version(lib)


_lib: ctypes.CDLL | None = None
_log: deque[str] = deque(maxlen=200)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, c_size_t, c_char_p, c_void_p]

PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)  # (level, fmt, va_list)


@PRINT_FN
def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    buf = ctypes.create_string_buffer(1 << 20)
    _libc.vsnprintf(buf, len(buf), fmt, va_list)
    line = buf.value.decode(errors="replace").rstrip()
    if line:
        _log.append(line)
    return 0


def last_log(lines: int = 3) -> str:
    """libbpf's most recent messages, most relevant last, as one line."""
    tail = [line for line in list(_log)[-lines:] if line]
    return " | ".join(tail)


def verifier_log() -> str:
    return "\n".join(_log)


_REASON_SKIP = re.compile(r"^(processed \d+ insns|verification time|stack depth|Func#|Validating|"
                          r"-- (BEGIN|END) PROG LOAD LOG|\d+: |; |from \d+ to|mark_precise|last_idx|"
                          r"frame\d|R\d+=|\s*$)")


def verifier_reason(log: str) -> str | None:
    """The verifier's reason for refusing a program, as one line: the last line of its log that
    is neither an instruction, a state dump nor the closing statistics; None in the log of a
    program it accepted."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line and not _REASON_SKIP.match(line):
            return line
    return None


def _check_int(result, func, args):
    if result < 0:
        raise LibbpfError(func.__name__, -result, last_log())
    return result


def _check_ptr(result, func, args):
    if not result:
        err = ctypes.get_errno() or 22
        raise LibbpfError(func.__name__, err, last_log())
    return result


# name: (restype, argtypes, errcheck)
_SIGNATURES = {
    "libbpf_major_version": (c_uint32, [], None),
    "libbpf_minor_version": (c_uint32, [], None),
    "libbpf_set_print": (c_void_p, [PRINT_FN], None),
    "libbpf_num_possible_cpus": (c_int, [], _check_int),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p], _check_ptr),
    "bpf_object__load": (c_int, [c_void_p], _check_int),
    "bpf_object__close": (None, [c_void_p], None),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p], _check_ptr),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p], None),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p], None),
    "bpf_program__name": (c_char_p, [c_void_p], None),
    "bpf_program__section_name": (c_char_p, [c_void_p], None),
    "bpf_program__attach": (c_void_p, [c_void_p], _check_ptr),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p], _check_ptr),
    "bpf_program__fd": (c_int, [c_void_p], _check_int),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool], _check_int),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32], _check_int),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_void_p, c_size_t], _check_int),
    "bpf_link__destroy": (c_int, [c_void_p], None),
    "bpf_object__btf": (c_void_p, [c_void_p], None),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32], None),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32], None),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32], None),
    "btf__resolve_size": (ctypes.c_int64, [c_void_p, c_uint32], None),
    "bpf_map__name": (c_char_p, [c_void_p], None),
    "bpf_map__fd": (c_int, [c_void_p], _check_int),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32], _check_int),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)], None),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t], _check_int),
    "bpf_map__value_size": (c_uint32, [c_void_p], None),
    "bpf_map__max_entries": (c_uint32, [c_void_p], None),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p], None),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64], None),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p], None),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p], None),
}


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    errors = []
    for name in (*_NAMES, ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib._name = name
        for fname, (restype, argtypes, errcheck) in _SIGNATURES.items():
            fn = getattr(lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
            if errcheck:
                fn.errcheck = errcheck
        lib.libbpf_set_print(_print_cb)
        _lib = lib
        return lib
    raise OSError(f"libbpf not found ({'; '.join(errors) or 'no candidates'})")


def _version(lib: ctypes.CDLL) -> str:
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def lib() -> ctypes.CDLL:
    return _load()


BTF_KIND_STRUCT, BTF_KIND_DATASEC = 4, 15


def struct_fields(obj: int, name: str) -> dict[str, tuple[int, int]]:
    """{member: (byte offset, byte size)} of a struct as the object's BTF lays it out (the kernel side's truth);
    {} if the object has no such struct."""
    L = _load()
    btf = L.bpf_object__btf(obj)
    sid = L.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT) if btf else -1
    if sid < 0:
        return {}
    t = L.btf__type_by_id(btf, sid)
    _name_off, info, _size = ctypes.cast(t, POINTER(c_uint32 * 3)).contents
    vlen, kflag = info & 0xFFFF, info >> 31
    members = ctypes.cast(t + 12, POINTER(c_uint32 * (3 * vlen))).contents
    out = {}
    for i in range(vlen):
        name_off, type_id, offset = members[3 * i], members[3 * i + 1], members[3 * i + 2]
        bits = offset & 0xFFFFFF if kflag else offset
        out[(L.btf__name_by_offset(btf, name_off) or b"").decode()] = (bits // 8, L.btf__resolve_size(btf, type_id))
    return out


def datasec_variables(obj: int, section: str) -> dict[str, tuple[int, int]]:
    """{variable: (offset, size)} of a data section (".rodata", ".bss") as the object's BTF lays it out."""
    L = _load()
    btf = L.bpf_object__btf(obj)
    if not btf:
        return {}
    sec_id = L.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
    if sec_id < 0:
        return {}
    t = L.btf__type_by_id(btf, sec_id)
    _name_off, info, _size = ctypes.cast(t, POINTER(c_uint32 * 3)).contents
    vlen = info & 0xFFFF
    infos = ctypes.cast(t + 12, POINTER(c_uint32 * (3 * vlen))).contents
    out = {}
    for i in range(vlen):
        var_id, offset, size = infos[3 * i], infos[3 * i + 1], infos[3 * i + 2]
        var = L.btf__type_by_id(btf, var_id)
        name = L.btf__name_by_offset(btf, ctypes.cast(var, POINTER(c_uint32)).contents.value)
        out[(name or b"").decode()] = (offset, size)
    return out


class UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts as of libbpf 0.8 (later versions accept this size)."""
    _fields_ = [("sz", c_size_t), ("ref_ctr_offset", c_size_t), ("bpf_cookie", ctypes.c_uint64),
                ("retprobe", ctypes.c_bool), ("func_name", c_char_p)]


def attach_uprobe(prog: int, path: str, offset: int, cookie: int = 0, retprobe: bool = False, pid: int = -1) -> int:
    """Attach `prog` at file offset `offset` of the ELF file `path` (a uprobe on the file's inode: every
    process that maps it, now or later, unless `pid` names one); the link, to bpf_link__destroy."""
    opts = UprobeOpts(sz=ctypes.sizeof(UprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
    return lib().bpf_program__attach_uprobe_opts(prog, pid, path.encode(), offset, ctypes.byref(opts))


def map_lookup(fd: int, key: ctypes._SimpleCData | ctypes.Structure, value) -> bool:
    """True if found; raises on errors other than ENOENT."""
    rc = lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if rc < 0 and (-rc == 2 or err == 2):
        return False
    raise LibbpfError("bpf_map_lookup_elem", err or -rc)


def map_update(fd: int, key, value, flags: int = 0) -> None:
    rc = lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags)
    if rc < 0:
        raise LibbpfError("bpf_map_update_elem", ctypes.get_errno() or -rc)


def map_delete(fd: int, key) -> bool:
    rc = lib().bpf_map_delete_elem(fd, ctypes.byref(key))
    return rc == 0


def map_keys(fd: int, key_type):
    """Iterate the keys of a hash map (a snapshot; entries may come and go meanwhile)."""
    prev = None
    while True:
        nxt = key_type()
        rc = lib().bpf_map_get_next_key(fd, ctypes.byref(prev) if prev is not None else None, ctypes.byref(nxt))
        if rc != 0:
            return
        yield nxt
        prev = nxt
