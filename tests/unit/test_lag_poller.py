"""The poller's lag-in-seconds estimate (Kafka Lag Exporter's lookup table), without a broker."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.testbed.lag_poller import LookupTable, Point


def table(*points: tuple[int, float], limit: int = 60) -> LookupTable:
    t = LookupTable(limit)
    for offset, time in points:
        t.add(offset, time)
    return t


def test_too_few_points_give_no_estimate():
    assert LookupTable().lag_seconds(5, now=100.0) is None
    assert table((10, 100.0)).lag_seconds(5, now=130.0) is None


def test_committed_at_the_newest_end_offset_is_no_lag():
    assert table((10, 100.0)).lag_seconds(10, now=130.0) == 0.0
    assert table((0, 100.0), (10, 130.0)).lag_seconds(10, now=131.0) == 0.0


def test_interpolates_between_the_two_points_around_the_offset():
    t = table((0, 100.0), (100, 110.0), (400, 120.0))   # 10/s, then 30/s
    assert t.time_of(50) == (105.0, False)
    assert t.time_of(250) == (115.0, False)
    assert t.lag_seconds(250, now=120.0) == pytest.approx(5.0)
    assert t.lag_seconds(100, now=120.0) == pytest.approx(10.0)


def test_extrapolates_from_first_and_last_point_outside_the_table():
    t = table((100, 110.0), (200, 120.0), (300, 130.0))
    when, extrapolated = t.time_of(50)
    assert extrapolated and when == pytest.approx(105.0)
    assert t.lag_seconds(50, now=130.0) == pytest.approx(25.0)


def test_no_slope_no_estimate():
    """The end offset never moved over the whole table: no rate to extrapolate along."""
    t = table((200, 100.0), (200, 130.0))
    assert t.time_of(150) is None
    assert t.lag_seconds(150, now=130.0) is None


def test_a_flat_run_keeps_its_first_and_last_point():
    t = table((100, 0.0), (200, 10.0), (200, 20.0), (200, 30.0), (200, 40.0))
    assert list(t.points) == [Point(100, 0.0), Point(200, 10.0), Point(200, 40.0)]


def test_newest_pair_wins_where_offsets_repeat():
    """A consumer that committed the offset a flat run sat at is measured from the run's end:
    the message after it was produced later than the run began."""
    t = table((0, 0.0), (100, 10.0), (100, 20.0), (200, 30.0))
    assert t.time_of(100) == (20.0, False)


def test_points_out_of_order_are_dropped():
    t = table((100, 10.0), (90, 20.0), (150, 5.0), (150, 10.0), (200, 20.0))
    assert list(t.points) == [Point(100, 10.0), Point(200, 20.0)]


def test_the_table_slides():
    t = table(*((i * 10, float(i)) for i in range(10)), limit=4)
    assert [p.offset for p in t.points] == [60, 70, 80, 90]
    assert t.time_of(20) == (pytest.approx(2.0), True)


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(1, 5000), gaps=st.lists(st.floats(0.5, 60), min_size=2, max_size=30),
       back=st.floats(0, 1))
def test_a_steady_producer_is_estimated_exactly(rate, gaps, back):
    """At a constant produce rate the end offset is linear in time, so any committed offset inside
    the table maps to the time it was produced (to the rounding of offsets to integers)."""
    times, now = [], 1000.0
    for gap in gaps:
        now += gap
        times.append(now)
    t = table(*((int(rate * (x - 1000.0)), x) for x in times))
    first, last = t.points[0], t.points[-1]
    committed = int(first.offset + back * (last.offset - first.offset))
    if committed == last.offset or last.offset == first.offset:
        return
    truth = now - (1000.0 + committed / rate)
    assert t.lag_seconds(committed, now) == pytest.approx(truth, abs=2.5 / rate + 1e-6)


def test_a_burst_between_polls_is_smeared():
    """What interpolation cannot know: 1000 messages produced in the last second before a poll
    look as if spread over the 30 s since the previous one."""
    t = table((0, 0.0), (1000, 30.0))           # truly produced at 29..30 s
    assert t.lag_seconds(500, now=30.0) == pytest.approx(15.0)   # truth: about 0.5 s
