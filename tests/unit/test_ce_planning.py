"""The CE's arithmetic: how many pilots of each shape to submit, within the limits. Pure functions, no processes."""

from __future__ import annotations

import pytest

from gridpilot.ce.backend import Resources
from gridpilot.ce.planning import Limits, exclusive_waiting, plan, room

SMALL = Resources(1, 2000, 3600)
BIG = Resources(8, 16000, 3600)
LONG = Resources(1, 2000, 86400)
GPU = Resources(1, 2000, 3600, gpus=1)
NVIDIA = Resources(1, 2000, 3600, gpus=1, gpu_vendor="NVIDIA")
NVIDIA2 = Resources(1, 2000, 3600, gpus=2, gpu_vendor="NVIDIA")
AMD = Resources(1, 2000, 3600, gpus=1, gpu_vendor="AMD")
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


def test_gpu_shapes_contain_the_jobs_of_smaller_and_of_cpu_shapes_only():
    # A job without GPUs fits a GPU slot too; a job asking for GPUs never fits a CPU slot.
    assert SMALL.fits_in(GPU) and not GPU.fits_in(SMALL)
    # A job that names the GPUs it wants (GPU = "NVIDIA") fits GPUs of that kind only; an unnamed GPU shape's jobs
    # (asking for a count only) fit any GPUs, as many or more.
    assert not NVIDIA.fits_in(GPU) and GPU.fits_in(NVIDIA) and NVIDIA.fits_in(NVIDIA2) and not NVIDIA2.fits_in(NVIDIA)
    assert not NVIDIA.fits_in(AMD) and not AMD.fits_in(NVIDIA)
    # The probe of the GPU shape counts the CPU jobs too: the GPU shape is charged with its own jobs only.
    assert exclusive_waiting({SMALL: 3, NVIDIA: 6}) == {SMALL: 3, NVIDIA: 3}
    assert exclusive_waiting({SMALL: 3, NVIDIA: 6, AMD: 4}) == {SMALL: 3, NVIDIA: 3, AMD: 1}
    assert plan({SMALL: 3, NVIDIA: 6}, {NVIDIA: 1}, WIDE, queued=1, in_batch=1) == {SMALL: 3, NVIDIA: 2}


def test_gpu_shapes_say_what_they_are():
    assert NVIDIA.label() == "1c/2000MB/3600s/1gpu(NVIDIA)" and GPU.label() == "1c/2000MB/3600s/1gpu"
    assert SMALL.label() == "1c/2000MB/3600s"
    assert NVIDIA2.site_map_gpus() == [{"vendor": "NVIDIA", "model": ""}] * 2 and SMALL.site_map_gpus() == []
    assert Resources.from_dict(NVIDIA2.to_dict()) == NVIDIA2
    with pytest.raises(ValueError, match="gpus must be a whole number of at least 0"):
        Resources(1, 100, 60, gpus=-1)
    with pytest.raises(ValueError, match="gpu_model 'A100' is given but gpus is 0"):
        Resources(1, 100, 60, gpu_model="A100")
