"""The digest layouts and the Python twin of the kernel's walk, against frames made up from every
layout whose skipped ranges are known (tests/testbed/digest_frames.py)."""

from __future__ import annotations

import pytest

from otel_kafka_ebpf.capture import events as ev
from otel_kafka_ebpf.capture import layouts as L
from tests.testbed.digest_frames import conversation

TABLE = L.layouts_for("digest")


def test_every_layout_fits_the_kernel_side():
    assert len(TABLE) < ev.MAX_LAYOUTS
    for key, ops in TABLE.items():
        assert len(ops) <= ev.LAYOUT_OPS, key
        assert ops[-1] == (L.OP_STOP, 0), key
        depth = 0
        for i, (op, arg) in enumerate(ops):
            assert 0 <= arg <= 255
            if op in (L.OP_ARRAY, L.OP_CARRAY):
                assert ops[i + arg + 1][0] == L.OP_END, (key, i)
                depth += 1
                assert depth <= ev.MAX_DEPTH, key
            elif op == L.OP_END:
                depth -= 1
        assert depth == 0, key


def test_full_mode_layouts_are_sasl_only():
    assert {api for _, api, _ in L.layouts_for("full")} == {L.SASL_HANDSHAKE, L.SASL_AUTHENTICATE}
    assert set(L.layouts_for("full")) <= set(TABLE)


@pytest.mark.parametrize("record_prefix", [0, 100])
@pytest.mark.parametrize("seed", range(12))
def test_the_walk_skips_exactly_the_records(seed, record_prefix):
    requests, responses, exchanges = conversation(seed, record_prefix)
    conn = L.ConnectionDigest()
    covered = set()
    for request, response, exchange in zip(requests, responses, exchanges):
        for frame, is_request in ((request, True), (response, False)):
            pieces = L.frame_pieces(frame.data, is_request, TABLE, conn, record_prefix)
            assert sum(p.length for p in pieces) == len(frame.data)
            assert [p.start for p in pieces] == [0] + [p.start + p.length for p in pieces[:-1]]
            skipped = tuple((p.start, p.length) for p in pieces if not p.copied)
            assert skipped == frame.skips, (exchange, is_request)
        covered.add(exchange)
    assert covered >= {(api, version) for _, api, version in TABLE}
