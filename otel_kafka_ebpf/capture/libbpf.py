"""Thin ctypes bindings to the system libbpf (Debian `libbpf1`).

The C signatures are one table of data; two error checkers cover libbpf's conventions (a negative
errno as the return value; NULL with errno set). libbpf's own log lines are collected, so an error
raised here carries libbpf's explanation (a verifier log, a missing BTF type) in its message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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
    "bpf_program__attach": (c_void_p, [c_void_p], _check_ptr),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool], _check_int),
    "bpf_link__destroy": (c_int, [c_void_p], None),
    "bpf_map__name": (c_char_p, [c_void_p], None),
    "bpf_map__fd": (c_int, [c_void_p], _check_int),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32], _check_int),
    "bpf_map__initial_value": (c_void_p, [c_void_p, POINTER(c_size_t)], None),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t], _check_int),
    "bpf_map__value_size": (c_uint32, [c_void_p], None),
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
