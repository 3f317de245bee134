"""WindDown (pilot/winddown.py): when the JobAgent kills a JobWrapper that is still there, and what it traces."""

from __future__ import annotations

from gridpilot.pilot.winddown import CENTRAL_KILL_BOUND_S, UPLOAD_KILL_MARGIN_S, WindDown


def test_nothing_is_due_when_idle() -> None:
    w = WindDown(drain_grace=60)
    assert w.due() is None
    assert w.expired(1e12) == []
    w.upload_progress({"pending": ["out.txt"], "current": "out.txt"})  # no upload grace: nothing to record
    assert w.uploads is None and not w.wound_down


def test_limit_kill_deadline_is_the_grace_plus_the_margin() -> None:
    w = WindDown(drain_grace=60)
    w.after_limit_kill(100.0, grace=20)
    assert w.due() == 100.0 + 20 + UPLOAD_KILL_MARGIN_S
    assert w.expired(w.due()) == []  # not at the deadline, only past it
    assert w.expired(w.due() + 0.01) == ["upload grace of 20 s after the kill over: the JobWrapper is killed",
                                          "nothing was left to upload"]


def test_the_earlier_of_two_deadlines_wins() -> None:
    # The slot ends first, with a short drain grace; a later limit kill's longer upload grace does not extend it.
    w = WindDown(drain_grace=10)
    assert w.slot_ending(100.0) is False
    assert w.wound_down and w.due() == 110.0
    w.after_limit_kill(101.0, grace=3600)
    assert w.due() == 110.0
    assert w.expired(110.5)[0] == "wind-down grace of 10 s over: the job is killed"
    # A limit kill with a shorter grace than what is left of the drain grace brings the deadline forward.
    w = WindDown(drain_grace=600)
    w.slot_ending(100.0)
    w.after_limit_kill(101.0, grace=10)
    assert w.due() == 101.0 + 10 + UPLOAD_KILL_MARGIN_S
    assert w.expired(200.0)[0] == "upload grace of 10 s after the kill over: the JobWrapper is killed"


def test_slot_end_during_an_upload_grace_keeps_the_earlier_deadline() -> None:
    w = WindDown(drain_grace=600)
    w.after_limit_kill(100.0, grace=10)
    assert w.slot_ending(101.0) is True  # the agent tells the uploading wrapper, not the payload
    assert w.due() == 100.0 + 10 + UPLOAD_KILL_MARGIN_S
    assert w.expired(200.0)[0] == "upload grace of 10 s after the kill over: the JobWrapper is killed"
    # The other way round: the slot's end comes before the upload grace's, and its own text is traced.
    w = WindDown(drain_grace=30)
    w.after_limit_kill(100.0, grace=3600)
    assert w.slot_ending(101.0) is True
    assert w.due() == 131.0
    assert w.expired(131.5) == ["wind-down grace of 30 s over: the job is killed", "nothing was left to upload"]


def test_the_trace_names_the_uploads_lost_at_the_kill() -> None:
    w = WindDown(drain_grace=60)
    w.after_limit_kill(0.0, grace=1)
    w.upload_progress({"pending": ["a.root", "b.root", "log_archive.zip"], "current": "a.root"})
    assert w.expired(100.0) == [
        "upload grace of 1 s after the kill over: the JobWrapper is killed",
        "not uploaded: a.root (its upload was under way), b.root (not started), log_archive.zip (not started)",
    ]
    w.upload_progress({"pending": [], "current": None})
    assert w.expired(100.0)[1] == "nothing was left to upload"


def test_a_central_kill_replaces_the_deadline_and_forgets_the_uploads() -> None:
    w = WindDown(drain_grace=60)
    w.after_limit_kill(0.0, grace=3600)
    w.after_central_kill(50.0)
    assert w.wound_down and w.uploads is None
    assert w.due() == 50.0 + CENTRAL_KILL_BOUND_S
    assert w.expired(60.0) == ["the JobWrapper is still there 3 s after the payload's kill: it is killed"]
