"""Reassembly of kernel events into streams: offsets are the truth, every jump is an exact gap."""

from otel_kafka_ebpf.capture import events as ev
from otel_kafka_ebpf.capture.loader import RawData
from otel_kafka_ebpf.capture.reassembly import StreamAssembler
from otel_kafka_ebpf.capture.streams import (
    ConnectionClosed, ConnectionOpened, Direction, GapReason, Role, StreamData, StreamGap,
)


def _open(conn_id=1, pid=10):
    e = ev.OpenEvent()
    e.type, e.pid, e.tid, e.family, e.role = ev.EV_OPEN, pid, pid, 2, 1
    e.conn_id, e.ts_ns, e.local_port, e.remote_port = conn_id, 1000, 40000, 9092
    e.local_addr[:4] = [127, 0, 0, 1]
    e.remote_addr[:4] = [127, 0, 0, 1]
    e.comm = b"java"
    return e


def _data(offset, payload, direction=0, flags=0, conn_id=1, pid=10):
    return RawData(conn_id, 2000 + offset, offset, pid, pid, direction, flags, payload)


def test_open_data_close_in_order():
    a = StreamAssembler(clock_offset_ns=5)
    out = a.feed(_open())
    assert out == [ConnectionOpened(1, 1005, 10, 10, "java", 0, 0, "127.0.0.1", 40000, "127.0.0.1", 9092, Role.CLIENT)]
    assert a.feed(_data(0, b"abcd")) == [StreamData(1, Direction.SEND, 2005, 0, b"abcd")]
    assert a.feed(_data(4, b"ef")) == [StreamData(1, Direction.SEND, 2009, 4, b"ef")]
    close = ev.CloseEvent(type=ev.EV_CLOSE, pid=10, conn_id=1, ts_ns=3000, send_bytes=6, recv_bytes=0)
    assert a.feed(close) == [ConnectionClosed(1, 3005)]


def test_offset_jump_is_a_gap_of_exact_length_with_its_reason():
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    a.feed(_data(0, b"x" * 10))
    out = a.feed(_data(110, b"y", flags=ev.GAP_BUDGET))
    assert out[0] == StreamGap(1, Direction.SEND, 2110, 10, 100, GapReason.BUDGET)
    assert out[1] == StreamData(1, Direction.SEND, 2110, 110, b"y")
    out = a.feed(_data(200, b"z", direction=1, flags=ev.GAP_RINGBUF | ev.GAP_BUDGET))
    assert out[0].reason == GapReason.RINGBUF_FULL and out[0].length == 200 and out[0].direction == Direction.RECV
    assert a.stats.gaps == 2 and a.stats.gap_bytes == 300


def test_trailing_bytes_missing_at_close_become_a_gap():
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    a.feed(_data(0, b"abc"))
    out = a.feed(ev.CloseEvent(type=ev.EV_CLOSE, pid=10, conn_id=1, ts_ns=5, send_bytes=10, recv_bytes=4))
    assert out[:2] == [StreamGap(1, Direction.SEND, 5, 3, 7, GapReason.RINGBUF_FULL),
                       StreamGap(1, Direction.RECV, 5, 0, 4, GapReason.RINGBUF_FULL)]
    assert out[2] == ConnectionClosed(1, 5)


def test_a_close_says_why_its_trailing_bytes_are_missing():
    # the kernel skipped the runs of the connection's last syscalls (recursion_misses): the socket's
    # sequence numbers at close say how many bytes each way, and the close carries the reason
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    a.feed(_data(0, b"abc"))
    close = ev.CloseEvent(type=ev.EV_CLOSE, pid=10, conn_id=1, ts_ns=5, send_bytes=10, recv_bytes=4)
    close.gap_flags[1] = ev.GAP_MISSED_RUN
    out = a.feed(close)
    assert out[:2] == [StreamGap(1, Direction.SEND, 5, 3, 7, GapReason.RINGBUF_FULL),
                       StreamGap(1, Direction.RECV, 5, 0, 4, GapReason.MISSED_RUN)]
    assert out[2] == ConnectionClosed(1, 5)


def test_overlap_is_trimmed_not_duplicated():
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    a.feed(_data(0, b"abcd"))
    out = a.feed(_data(2, b"cdef"))
    assert out == [StreamData(1, Direction.SEND, 2002, 4, b"ef")]
    assert a.feed(_data(0, b"ab")) == []


def test_process_exit_closes_its_connections_only():
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open(1, pid=10))
    a.feed(_open(2, pid=11))
    out = a.feed(ev.ExitEvent(type=ev.EV_EXIT, pid=10, ts_ns=9))
    assert out == [ConnectionClosed(1, 9)]
    assert a.open_connections() == 1


def test_data_without_open_is_announced_and_counted():
    a = StreamAssembler(clock_offset_ns=0)
    out = a.feed(_data(0, b"ab", conn_id=7, pid=3))
    assert isinstance(out[0], ConnectionOpened) and out[0].conn_id == 7 and out[0].pid == 3
    assert out[1] == StreamData(7, Direction.SEND, 2000, 0, b"ab")
    assert a.stats.orphan_data == 1


def test_unsynced_start_is_marked_even_without_missing_bytes():
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    out = a.feed(_data(0, b"mid-frame", direction=1, flags=ev.GAP_UNSYNCED))
    assert out[0] == StreamGap(1, Direction.RECV, 2000, 0, 0, GapReason.UNKNOWN_START)


def _record(conn_id, offset, payload, direction=0, gap_flags=0, flags=0, skips=(), skip_reason=0, ts=5000, last=6000):
    """A data event as the ring holds it: header, payload, skip table."""
    from otel_kafka_ebpf.capture.loader import DATA_HEADER
    import struct
    header = DATA_HEADER.pack(ev.EV_DATA, len(payload), conn_id, ts, offset, 10, 11, direction, gap_flags, flags,
                              len(skips), skip_reason, 0, last)
    return header + payload + b"".join(struct.pack("<II", at, n) for at, n in skips)


def test_a_record_read_straight_from_the_ring_gives_what_the_general_path_gives():
    from otel_kafka_ebpf.capture.loader import parse_data_event
    records = [
        _record(1, 0, b"\x00\x00\x00\x0a" + b"h" * 6, flags=ev.DATA_FRAME_START, skips=((10, 4),),
                skip_reason=ev.SKIP_RECORDS),
        _record(1, 14, b"abc", ts=7000, last=7000),
        _record(1, 17, b"x" * 8, skips=((4, 100), (6, 50)), skip_reason=ev.SKIP_SASL),
        _record(1, 500, b"late", gap_flags=ev.GAP_RINGBUF),  # a loss before it: the general way
        _record(1, 0, b"recv", direction=1),
        _record(2, 0, b"orphan"),  # no open event
    ]
    fast, general = StreamAssembler(clock_offset_ns=3), StreamAssembler(clock_offset_ns=3)
    fast.feed(_open())
    general.feed(_open())
    for raw in records:
        assert fast.feed_data_record(raw) == general.feed(parse_data_event(raw))
    assert fast.stats == general.stats


def test_bytes_of_syscalls_the_kernel_never_ran_the_program_for_are_a_missed_run_gap():
    """The kernel skips a run of the program (recursion_misses); the socket's sequence number tells it how many
    bytes went by unseen, and the next event carries the flag: a loss of exact length, said as such."""
    a = StreamAssembler(clock_offset_ns=0)
    a.feed(_open())
    a.feed(_data(0, b"x" * 10, direction=1))
    out = a.feed(_data(60, b"y", direction=1, flags=ev.GAP_MISSED_RUN | ev.GAP_UNSYNCED))
    assert out[0] == StreamGap(1, Direction.RECV, 2060, 10, 50, GapReason.MISSED_RUN)
    assert out[0].reason.is_loss
    assert out[1] == StreamData(1, Direction.RECV, 2060, 60, b"y")
