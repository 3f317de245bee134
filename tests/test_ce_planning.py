"""The CE's arithmetic: how many pilots of each shape to submit, within the limits. Pure functions, no processes."""

from __future__ import annotations

import pytest

from gridpilot.ce.backend import Resources
from gridpilot.ce.planning import Limits, exclusive_waiting, plan, room

SMALL = Resources(1, 2000, 3600)
BIG = Resources(8, 16000, 3600)
LONG = Resources(1, 2000, 86400)
WIDE = Limits(max_queued=100, max_running=100, per_cycle=100)


def test_one_pilot_per_waiting_job_less_those_on_their_way():
    assert plan({SMALL: 5}, {SMALL: 2}, WIDE, queued=2, in_batch=2) == {SMALL: 3}
    assert plan({SMALL: 2}, {SMALL: 5}, WIDE, queued=5, in_batch=5) == {SMALL: 0}
    assert plan({SMALL: 0}, {}, WIDE, queued=0, in_batch=0) == {SMALL: 0}


@pytest.mark.parametrize("limits, queued, in_batch, expect", [
    (Limits(max_queued=10, max_running=100, per_cycle=100), 7, 7, 3),    # max_queued
    (Limits(max_queued=100, max_running=20, per_cycle=100), 0, 18, 2),   # max_running counts every pilot in the batch
    (Limits(max_queued=100, max_running=100, per_cycle=4), 0, 0, 4),     # per cycle
    (Limits(max_queued=5, max_running=100, per_cycle=100), 9, 9, 0),     # already over: nothing, never negative
])
def test_the_limits_cut_the_demand(limits, queued, in_batch, expect):
    assert room(limits, queued, in_batch) == expect
    assert plan({SMALL: 50}, {}, limits, queued=queued, in_batch=in_batch) == {SMALL: expect}


def test_a_job_that_fits_a_small_shape_is_not_counted_again_for_a_larger_one():
    # The probe of BIG counts the 4 small jobs too: BIG itself needs pilots for 6 only.
    assert exclusive_waiting({SMALL: 4, BIG: 10}) == {SMALL: 4, BIG: 6}
    # Shapes that do not contain each other are independent.
    assert exclusive_waiting({BIG: 3, LONG: 2}) == {BIG: 3, LONG: 2}
    # Of several smaller shapes inside, the largest count is the one to subtract (their jobs overlap).
    assert exclusive_waiting({SMALL: 4, LONG: 5, Resources(8, 16000, 86400): 12}) == {
        SMALL: 4, LONG: 1, Resources(8, 16000, 86400): 7}


def test_smallest_shapes_are_served_first_when_room_is_short():
    limits = Limits(max_queued=100, max_running=100, per_cycle=5)
    assert plan({SMALL: 4, BIG: 10}, {}, limits, queued=0, in_batch=0) == {SMALL: 4, BIG: 1}
    assert plan({SMALL: 4, BIG: 10}, {SMALL: 4}, limits, queued=4, in_batch=4) == {SMALL: 0, BIG: 5}


def test_resources_are_checked():
    with pytest.raises(ValueError, match="cores"):
        Resources(0, 100, 60)
    with pytest.raises(ValueError, match="wall_s"):
        Resources(1, 100, 1.5)  # type: ignore[arg-type]
    assert Resources(1, 100, 61).wall_minutes == 2
    assert SMALL.fits_in(BIG) and not BIG.fits_in(SMALL) and not LONG.fits_in(BIG)
