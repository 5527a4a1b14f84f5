"""What a compiled BPF object asks of the verifier, read from its ELF without a kernel.

The verifier refuses a program whose call chain needs more than 512 bytes of stack in all, and a
bpf_loop callback whose return value it cannot prove to be 0 or 1. Both depend on the compiler as
much as on the source, and a kernel's patch release can move a program that sat at the edge over
it. This reader measures them from the object, so that a change that eats the headroom fails a unit
test on any machine before any kernel sees it:

    obj = BpfObject.read(path)
    for chain in obj.chains():          # every path through the call graph, from each program
        chain.stack, chain.names
    obj.callback_returns()              # {callback: [why its return is not provably 0 or 1]}

The stack of one function is its deepest r10-relative access or pointer, rounded up to 32 bytes as
the verifier rounds it. Calls are bpf-to-bpf calls and the callbacks whose address a function
passes to a helper (bpf_loop, bpf_for_each_map_elem): the verifier runs a callback in a frame below
its caller's, so its stack adds to that chain.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

MAX_STACK = 512          # the verifier's limit for a whole call chain (MAX_BPF_STACK)
STACK_ROUND = 32         # each frame counts rounded up to this (round_up_stack_depth)

_INSN = struct.Struct("<BBhi")
_CALL, _EXIT, _LD_IMM64 = 0x85, 0x95, 0x18
_PSEUDO_CALL, _PSEUDO_FUNC = 1, 4
_ALU64_MOV_X, _ALU64_ADD_K = 0xBF, 0x07
_BPF_FUNC_LOOP = 181
LOOP_INLINE_STACK = 24   # the verifier inlines bpf_loop with three 8-byte slots in its caller's frame


class ObjectError(ValueError):
    """The file is not a BPF ELF object this reader understands."""


@dataclass
class Function:
    name: str
    section: str
    start: int             # first instruction, within its section
    insns: int
    depth: int = 0         # bytes of stack, in 8-byte slots: the kernel's "stack depth" figure
    stack: int = 0         # the same, rounded as the verifier rounds frames for a chain's sum
    calls: set[str] = field(default_factory=set)       # bpf-to-bpf callees
    callbacks: set[str] = field(default_factory=set)   # functions whose address it passes to a helper
    program: bool = False  # an entry point (a SEC() program), not a subprogram


@dataclass(frozen=True)
class Chain:
    names: tuple[str, ...]
    stack: int


def _round(n: int) -> int:
    return (max(n, 1) + STACK_ROUND - 1) // STACK_ROUND * STACK_ROUND


class BpfObject:
    def __init__(self, functions: dict[str, Function], producer: str | None,
                 code: dict[str, bytes]):
        self.functions = functions
        self.producer = producer      # the compiler named in the object's DWARF, if it has any
        self._code = code

    # ---- reading the ELF ----

    @classmethod
    def read(cls, path: str) -> "BpfObject":
        with open(path, "rb") as f:
            data = f.read()
        return cls.parse(data)

    @classmethod
    def parse(cls, data: bytes) -> "BpfObject":
        if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
            raise ObjectError("not a 64-bit little-endian ELF file")
        (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if struct.unpack_from("<H", data, 0x12)[0] != 247:
            raise ObjectError("not a BPF object (e_machine is not EM_BPF)")
        sections = []
        for i in range(e_shnum):
            name, typ, _flags, _addr, off, size, link, info, _align, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
            sections.append((name, typ, off, size, link, info, entsize))
        strtab = sections[e_shstrndx]

        def cstr(table_off: int, at: int) -> str:
            end = data.index(b"\0", table_off + at)
            return data[table_off + at:end].decode()

        names = [cstr(strtab[2], s[0]) for s in sections]
        body = {names[i]: data[s[2]:s[2] + s[3]] for i, s in enumerate(sections)}
        symtab_i = next((i for i, s in enumerate(sections) if s[1] == 2), None)  # SHT_SYMTAB
        if symtab_i is None:
            raise ObjectError("no symbol table")
        _n, _t, sym_off, sym_size, sym_link, _i, sym_ent = sections[symtab_i]
        sym_str = sections[sym_link][2]
        symbols = []
        for off in range(sym_off, sym_off + sym_size, sym_ent or 24):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off)
            symbols.append((cstr(sym_str, st_name) if st_name else "", st_info & 0xF, st_info >> 4,
                            st_shndx, st_value, st_size))

        functions: dict[str, Function] = {}
        code: dict[str, bytes] = {}
        by_place: dict[tuple[str, int], str] = {}
        for name, typ, bind, shndx, value, size in symbols:
            if typ != 2 or shndx == 0 or shndx >= len(sections):  # STT_FUNC
                continue
            sec = names[shndx]
            functions[name] = Function(name, sec, value // 8, size // 8, program=sec != ".text")
            code[sec] = body[sec]
            by_place[(sec, value // 8)] = name

        def owner(sec: str, insn: int) -> str | None:
            for f in functions.values():
                if f.section == sec and f.start <= insn < f.start + f.insns:
                    return f.name
            return None

        # relocations: (section, instruction) -> (symbol section, symbol value)
        relocs: dict[tuple[str, int], tuple[str, int]] = {}
        for i, (_n, typ, off, size, _link, info, ent) in enumerate(sections):
            if typ != 9 or not names[i].startswith(".rel"):  # SHT_REL
                continue
            target = names[info]
            if target not in code:
                continue
            for r in range(off, off + size, ent or 16):
                r_off, r_info = struct.unpack_from("<QQ", data, r)
                sym = symbols[r_info >> 32]
                if 0 < sym[3] < len(sections):
                    relocs[(target, r_off // 8)] = (names[sym[3]], sym[4])

        for f in functions.values():
            f.depth = (_frame_depth(code[f.section], f.start, f.insns) + 7) // 8 * 8
            f.stack = _round(f.depth)
            text = code[f.section]
            for pc in range(f.start, f.start + f.insns):
                op, regs, _off, imm = _INSN.unpack_from(text, pc * 8)
                src = regs >> 4
                callee = None
                if op == _CALL and src == _PSEUDO_CALL:
                    rel = relocs.get((f.section, pc))
                    if rel:
                        callee = by_place.get((rel[0], rel[1] // 8 + imm + 1))
                    else:
                        callee = owner(f.section, pc + imm + 1)
                    if callee:
                        f.calls.add(callee)
                elif op == _LD_IMM64:
                    # the address of a function: relocated against a code section in the object
                    # (libbpf marks it BPF_PSEUDO_FUNC at load), or already marked so
                    rel = relocs.get((f.section, pc))
                    if rel and rel[0] in code:
                        callee = by_place.get((rel[0], (rel[1] + imm) // 8))
                    elif src == _PSEUDO_FUNC:
                        callee = by_place.get((f.section, pc + imm + 1))
                    if callee:
                        f.callbacks.add(callee)

        producer = None
        m = re.search(rb"[\w .()~+-]*clang version [\w .()~+-]+", body.get(".debug_str", b""))
        if m:
            producer = m.group(0).decode(errors="replace").strip()
        return cls(functions, producer, code)

    # ---- what the verifier will count ----

    def chains(self) -> list[Chain]:
        """Every call path from each program, with the stack it needs in all."""
        out: list[Chain] = []

        def walk(name: str, path: tuple[str, ...], depth: int) -> None:
            f = self.functions[name]
            path = path + (name,)
            depth += f.stack
            nexts = sorted(f.calls | f.callbacks)
            nexts = [n for n in nexts if n not in path]  # recursion is refused anyway
            if not nexts:
                out.append(Chain(path, depth))
            for n in nexts:
                walk(n, path, depth)

        for f in self.functions.values():
            if f.program:
                walk(f.name, (), 0)
        return out

    def reachable(self, program: str) -> list[Function]:
        """The program and every function it calls or passes as a callback, once each."""
        seen: dict[str, Function] = {}
        todo = [program]
        while todo:
            f = self.functions[todo.pop()]
            if f.name not in seen:
                seen[f.name] = f
                todo.extend(sorted(f.calls | f.callbacks))
        return list(seen.values())

    def deepest(self) -> Chain:
        return max(self.chains(), key=lambda c: c.stack)

    def callback_returns(self) -> dict[str, list[str]]:
        """Each callback's exits whose return value is not provably 0 or 1.

        Provable, along every path to the exit: r0 was last set to 0 or 1, masked with `&= 1`
        (64 or 32 bits: a 32-bit result is zero-extended), or moved from a register that was.
        Anything else (a shift pair that zero-extends a 32-bit value, a helper's result) leaves
        the range to the verifier's own tracking, which newer kernels check and may not narrow."""
        found: dict[str, list[str]] = {}
        callbacks = {c for f in self.functions.values() for c in f.callbacks}
        for name in sorted(callbacks):
            f = self.functions[name]
            bad = _unproven_exits(self._code[f.section], f.start, f.insns)
            if bad:
                found[name] = [f"insn {pc}: r0 may be other than 0 or 1 at this exit" for pc in bad]
        return found


def _frame_depth(text: bytes, start: int, n: int) -> int:
    """The deepest byte below r10 that a function touches or points at, with the slots the
    verifier adds to a frame that calls bpf_loop (which it inlines)."""
    at = {10: 0}
    extra = 0  # register -> offset from r10, for registers known to hold r10 + constant
    low = 0
    for pc in range(start, start + n):
        op, regs, off, imm = _INSN.unpack_from(text, pc * 8)
        dst, src = regs & 0xF, regs >> 4
        cls = op & 0x07
        if cls in (0x01, 0x02, 0x03) or op in (0xDB, 0xC3):  # LDX, ST, STX, atomics
            base = src if cls == 0x01 else dst
            if base in at:
                low = min(low, at[base] + off)
        if op == _ALU64_MOV_X and src == 10:
            at[dst] = 0
            continue
        if op == _ALU64_ADD_K and dst in at and dst != 10:
            at[dst] += imm
            low = min(low, at[dst])
            continue
        if op == _LD_IMM64:
            at.pop(dst, None)
            continue
        if cls in (0x04, 0x07, 0x01) and dst != 10:   # any other write to a register forgets it
            at.pop(dst, None)
        if op == _CALL:
            if (regs >> 4) == 0 and imm == _BPF_FUNC_LOOP:
                extra = LOOP_INLINE_STACK
            for r in range(0, 6):
                at.pop(r, None)
    return -low + extra


def _unproven_exits(text: bytes, start: int, n: int) -> list[int]:
    """Exits (relative instruction numbers) reachable with r0 not known to be 0 or 1.

    A forward dataflow over the function's instructions: the set of registers known to hold 0 or
    1, intersected where paths meet."""
    insns = [_INSN.unpack_from(text, (start + i) * 8) for i in range(n)]
    entry: list[frozenset | None] = [None] * n
    entry[0] = frozenset()
    work = [0]
    bad: set[int] = set()
    while work:
        pc = work.pop()
        known = set(entry[pc])
        op, regs, off, imm = insns[pc]
        dst, src = regs & 0xF, regs >> 4
        cls = op & 0x07
        succ: list[int] = []
        if op == _EXIT:
            if 0 not in known:
                bad.add(pc)
        elif op == _CALL:
            known -= {0, 1, 2, 3, 4, 5}
            succ = [pc + 1]
        elif cls in (0x05, 0x06):                      # jumps
            target = pc + 1 + (imm if (op == 0x06 and cls == 0x06) else off)
            succ = [target] if (op & 0xF0) == 0x00 else [pc + 1, target]
        elif op == _LD_IMM64:
            known.discard(dst)
            succ = [pc + 2]
        else:
            if cls in (0x04, 0x07):                    # ALU, ALU64
                code = op & 0xF0
                k = (op & 0x08) == 0
                if code == 0xB0:                       # mov
                    is_bool = (imm in (0, 1)) if k else (src in known)
                    (known.add if is_bool else known.discard)(dst)
                elif code == 0x50 and k and imm == 1:  # and 1
                    known.add(dst)
                elif code == 0x50 and k and imm in (0,):
                    known.add(dst)
                elif code == 0x50 and not k and src in known:
                    known.add(dst)
                else:
                    known.discard(dst)
            elif cls == 0x01:                          # loads
                known.discard(dst)
            succ = [pc + 1]
        for s in succ:
            if not 0 <= s < n:
                continue
            new = frozenset(known) if entry[s] is None else entry[s] & frozenset(known)
            if new != entry[s]:
                entry[s] = new
                work.append(s)
    return sorted(bad)
