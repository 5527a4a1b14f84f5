"""The BPF object keeps its distance from the verifier's limits, read from the object without a kernel.

A kernel's patch release once moved the object over the 512-byte stack limit, and a newer compiler
turned a callback's `? 1 : 0` into a form newer kernels refuse. These tests fail as soon as a change
eats the margin, on any machine, before any kernel sees the object; the kernel matrix
(tests/kernels/test_kernel_matrix.py) then proves it on real kernels.
"""

import os
import subprocess

import pytest

from otel_kafka_ebpf.capture.bpfobj import MAX_STACK, BpfObject
from otel_kafka_ebpf.capture.loader import object_path

STACK_MARGIN = 384       # at most this much of the 512 bytes for any call chain
PINNED_CLANG = "clang-19"
VECTORS = os.path.join(os.path.dirname(__file__), "..", "vectors", "bpf")


@pytest.fixture(scope="module")
def capture():
    return BpfObject.read(object_path("capture"))


def test_every_chain_keeps_the_stack_margin(capture):
    chains = capture.chains()
    assert any(c.names[0] == "sys_exit" and "walk_one" in c.names for c in chains), \
        "the walk's chain (sys_exit ... bpf_loop callback ... walk_one) was not found in the object"
    over = [c for c in chains if c.stack > STACK_MARGIN]
    assert not over, "call chains past the %d-byte margin (limit %d): %s" % (
        STACK_MARGIN, MAX_STACK, "; ".join(f"{' -> '.join(c.names)} = {c.stack} B" for c in over))


def test_every_callback_returns_a_provable_0_or_1(capture):
    callbacks = {c for f in capture.functions.values() for c in f.callbacks}
    assert {"walk_step", "flush_conn_of"} <= callbacks
    assert capture.callback_returns() == {}


def test_object_was_built_by_the_pinned_compiler(capture):
    assert capture.producer and "clang version 19." in capture.producer, capture.producer


def _compile(src: str, out: str) -> BpfObject:
    subprocess.run([PINNED_CLANG, "-g", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", src, "-o", out], check=True, capture_output=True)
    return BpfObject.read(out)


def test_reader_flags_the_shape_that_was_refused(tmp_path):
    """The test above can fail: an object shaped like the refused one (544 B through a bpf_loop
    callback, a callback returning a zero-extended int) is flagged on both counts. The 6.18 kernel
    refuses this object with "At callback return the register R0 has smin=0 smax=4294967295"."""
    obj = _compile(os.path.join(VECTORS, "over_the_edge.bpf.c"), str(tmp_path / "edge.o"))
    deepest = obj.deepest()
    assert deepest.names == ("prog", "step", "step_one")
    # frames as the kernel's verifier reports them for this object: "stack depth 344+0+192"
    # (the 24 bytes bpf_loop's inlining adds to its caller included), each rounded up to 32
    assert deepest.stack == 352 + 32 + 192 > MAX_STACK
    assert list(obj.callback_returns()) == ["step"]


def test_object_bytes_do_not_depend_on_the_build_machine(tmp_path):
    """The same source built in another directory, against the vmlinux.h fixed in the tree, gives the
    same bytes as the object the package carries (no build path, no build machine's BTF inside)."""
    import hashlib
    import shutil

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    tree = tmp_path / "elsewhere"
    tree.mkdir()
    for name in ("Makefile", "make", "bpf"):
        src = os.path.join(root, name)
        (shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns(".output"))
         if os.path.isdir(src) else shutil.copy(src, tree / name))
    subprocess.run(["make", "-s", "-C", str(tree), "bpf"], check=True, capture_output=True)
    built = tree / "otel_kafka_ebpf" / "capture" / "obj" / "capture.bpf.o"
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(built) == digest(object_path("capture")), "rebuild with `make bpf`: the object is stale"
