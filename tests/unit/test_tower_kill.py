"""The tower's decisions on central's kill (service.py, Kills): a job in the ARC CE is killed by its node, through
kill.request put into its session, and ARC's kill is only the fallback, after the grace or when the session is
gone; a job that never reached ARC, or never had its files, is ended at once; a job that ended otherwise on the node
before it learned of the kill is reported KILLED with nothing of it registered. The ARC CE here is a stand-in that
records what it is asked (the real A-REX path: tests/integration/test_tower_arc.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import orjson
import pytest

from gridpilot.arc.rest import ArcError, ArcJobGone
from gridpilot.tower import db as phases
from gridpilot.tower.db import HeldJob
from gridpilot.tower.service import Tower
from gridpilot.tower.settings import TowerSettings

CE = "https://arc.example.org/rest"
JDL = 'Executable = "/bin/true";\nForcedKillTimeout = 20;\n'
GRACE = 60.0


class RecordedCE:
    """What the tower asks one ARC CE; `state` is what diagnose answers, `put_error` what a PUT raises."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []
        self.state = "INLRMS"
        self.put_error: Optional[Exception] = None
        self.files: Dict[Tuple[str, str], bytes] = {}

    def put_file(self, job_id: str, name: str, data: Any) -> None:
        self.calls.append(("put", (job_id, name)))
        if self.put_error is not None:
            raise self.put_error
        self.files[(job_id, name)] = data if isinstance(data, bytes) else Path(data).read_bytes()

    def kill(self, ids: List[str]) -> Dict[str, int]:
        self.calls.append(("kill", list(ids)))
        return {i: 202 for i in ids}

    def diagnose_state(self, job_id: str) -> str:
        self.calls.append(("diagnose", job_id))
        if self.state == "404":
            raise ArcJobGone("gone", status=404, url=CE)
        return self.state

    def states(self, ids: List[str]) -> Dict[str, str]:
        self.calls.append(("states", list(ids)))
        return {} if self.state == "404" else {i: self.state for i in ids}

    def close(self) -> None:
        pass

    def asked(self, what: str) -> List[Any]:
        return [a for c, a in self.calls if c == what]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def world(tmp_path: Path) -> Tuple[Tower, RecordedCE, Clock]:
    token = tmp_path / "t.token"
    token.write_text("x")
    os.chmod(token, 0o600)
    s = TowerSettings(central_url="http://127.0.0.1:9", state_dir=str(tmp_path / "state"), name="tower9",
                      kill_grace=GRACE, sites=[{"site": "S", "token_file": str(token), "arc_ces": [CE],
                                                "install_path": "/gp"}])
    ce, clock = RecordedCE(), Clock()
    tower = Tower(s, arc_factory=lambda url: ce, clock=clock)  # type: ignore[arg-type,return-value]
    yield tower, ce, clock
    tower.close()


def _held(tower: Tower, phase: str, **cols: Any) -> HeldJob:
    job = tower.db.hold("S", {"id": 5, "resubmission": 0, "token": "j", "jdl": JDL, "user": "u"})
    tower.db.update(job, phase=phase, **cols)
    return job


def _bodies(tower: Tower) -> List[Dict[str, Any]]:
    return [r.body for r in tower.db.pending_reports(1000)]


def _texts(tower: Tower) -> List[str]:
    return [e["text"] for b in _bodies(tower) for e in b.get("trace", [])]


def _states(tower: Tower) -> List[str]:
    return [b["state"] for b in _bodies(tower) if "state" in b]


def test_a_queued_job_is_killed_by_its_node_not_by_arc(world: Any) -> None:
    tower, ce, clock = world
    job = _held(tower, phases.QUEUED, arc_url=CE, arc_id="A1", next_poll=5000.0)
    tower._kill(job, "kill requested")
    assert ce.files == {("A1", "kill.request"): b"kill requested, passed on by tower tower9\n"}
    (back,) = tower.db.jobs()
    assert back.phase == phases.QUEUED and back.kill_at == 1000.0 and back.kill_put == 1000.0
    assert back.next_poll == 1000.0, "the job is followed at once after the request"
    assert ce.asked("kill") == [] and _states(tower) == []
    assert any("the request goes into ARC job A1's session (kill.request)" in t and "within 80 s" in t
               for t in _texts(tower)), _texts(tower)
    # Central says it again at each heartbeat until the job ends: taken once.
    clock.now += 5
    tower._kill(back, "kill requested")
    tower._carry_kills(_report())
    assert len(ce.asked("put")) == 1 and ce.asked("kill") == [] and ce.asked("diagnose") == []


def _report() -> Any:
    from gridpilot.tower.service import CycleReport

    return CycleReport(started=0.0)


def test_after_the_grace_an_arc_job_still_on_is_killed_through_arc(world: Any) -> None:
    tower, ce, clock = world
    tower._kill(_held(tower, phases.QUEUED, arc_url=CE, arc_id="A1"), "kill requested")
    clock.now += GRACE + 20 - 1  # kill_grace beyond the job's ForcedKillTimeout (20 s)
    tower._carry_kills(_report())
    assert ce.asked("kill") == [] and tower.db.jobs()[0].phase == phases.QUEUED
    clock.now += 1
    tower._carry_kills(_report())
    assert ce.asked("diagnose") == ["A1"] and ce.asked("kill") == [["A1"]]
    (back,) = tower.db.jobs()
    assert back.phase == phases.PUBLISHED and back.final_state == "KILLED"
    end = _bodies(tower)[-1]
    assert (end["state"], end["kill_reason"]) == ("KILLED", "KILLED")
    assert "had not ended 80 s after the kill request (ARC state INLRMS): killed through ARC instead" in \
        end["trace"][0]["text"]


def test_after_the_grace_an_arc_job_that_ended_is_collected_not_killed(world: Any) -> None:
    tower, ce, clock = world
    tower._kill(_held(tower, phases.QUEUED, arc_url=CE, arc_id="A1", next_poll=9999.0), "kill requested")
    ce.state = "FINISHED"
    clock.now += GRACE + 20
    tower._carry_kills(_report())
    (back,) = tower.db.jobs()
    assert ce.asked("kill") == [] and back.phase == phases.QUEUED and back.next_poll == 0.0
    assert _states(tower) == []


@pytest.mark.parametrize("error, killed_now", [(ArcJobGone("gone", status=404, url=CE), True),
                                               (ArcError("connection refused", status=None, url=CE), False)])
def test_a_session_gone_or_away(world: Any, error: Exception, killed_now: bool) -> None:
    """404 for the session: nothing of the job left there to kill, KILLED at once (no ARC kill: there is no job).
    A CE away: the request is put again at the next cycle, and after the grace ARC's kill is tried all the same."""
    tower, ce, clock = world
    ce.put_error = error
    tower._kill(_held(tower, phases.QUEUED, arc_url=CE, arc_id="A1"), "kill requested")
    (back,) = tower.db.jobs()
    if killed_now:
        assert back.phase == phases.PUBLISHED and _states(tower) == ["KILLED"] and ce.asked("kill") == []
        assert any("no longer knows ARC job A1" in t for t in _texts(tower))
        return
    assert back.phase == phases.QUEUED and back.kill_put is None
    tower._carry_kills(_report())
    assert len(ce.asked("put")) == 2 and tower.db.jobs()[0].kill_put is None
    ce.put_error = None
    tower._carry_kills(_report())
    assert tower.db.jobs()[0].kill_put == clock.now and ce.asked("kill") == []
    # Had it never arrived: after the grace, ARC's kill, and the trace says the request never reached the session.
    ce.put_error = error
    job = tower.db.jobs()[0]
    tower.db.update(job, kill_put=None)
    clock.now += GRACE + 20
    tower._carry_kills(_report())
    assert ce.asked("kill") == [["A1"]] and _states(tower) == ["KILLED"]
    assert any("the request never reached its session" in t for t in _texts(tower))


def test_jobs_not_yet_running_in_arc_are_ended_at_once(world: Any) -> None:
    tower, ce, clock = world
    job = _held(tower, phases.STAGED)
    tower._kill(job, "kill requested")
    assert tower.db.jobs()[0].phase == phases.PUBLISHED and _states(tower) == ["KILLED"] and ce.calls == []
    assert any("it had not reached an ARC CE" in t for t in _texts(tower))
    tower.db.forget(job)
    tower.db.sent(r.id for r in tower.db.pending_reports(100))
    # Submitted, session files not all uploaded: A-REX runs nothing before it has them, so its kill is enough.
    tower._kill(_held(tower, phases.SUBMITTED, arc_url=CE, arc_id="A2"), "kill requested")
    assert ce.asked("kill") == [["A2"]] and ce.asked("put") == [] and _states(tower) == ["KILLED"]


def test_a_job_lost_after_the_kill_is_not_submitted_again(world: Any) -> None:
    tower, ce, clock = world
    tower._kill(_held(tower, phases.QUEUED, arc_url=CE, arc_id="A1"), "kill requested")
    ce.state = "404"
    clock.now += 1
    tower._follow(_report())
    (back,) = tower.db.jobs()
    assert back.phase == phases.PUBLISHED and back.final_state == "KILLED" and _states(tower) == ["KILLED"]


def _result(final: str, *, kill_reason: Optional[str] = None, outputs: int = 1) -> bytes:
    states: List[Dict[str, Any]] = [{"state": "STARTED", "at": 100.5}, {"state": "RUNNING", "at": 101.0}]
    if final != "RUNNING":
        states.append({"state": final, "at": 102.0, **({"kill_reason": kill_reason} if kill_reason else {}),
                       "exit_code": 0})
    return orjson.dumps({
        "format": 1, "job_id": 5, "resubmission": 0, "host": "wn", "started_at": 100.0, "ended_at": 103.0,
        "states": states,
        "trace": [{"ts": 101.5, "category": "trace", "text": "node line", "key": "0.r.1"}],
        "outputs": [{"name": f"out/o{i}", "lfn": f"/alice/o{i}", "size": 1, "adler32": "00620062", "md5": None}
                    for i in range(outputs)],
        "final": {"state": final, "kill_reason": kill_reason, "exit_code": 0}})


@pytest.mark.parametrize("node_end, reported", [
    ("SAVING", ["STARTED", "RUNNING", "SAVING", "KILLED"]),
    ("ERROR_E", ["STARTED", "RUNNING", "KILLED"]),
    ("KILLED", ["STARTED", "RUNNING", "KILLED"]),
])
def test_a_killed_job_collected_from_its_node_registers_nothing(world: Any, node_end: str,
                                                                reported: List[str]) -> None:
    """Whatever the node's end, a job whose kill central asked ends KILLED and nothing of it is registered (any
    registration would reach central, which this tower's cannot: the publish would fail). A node's own KILLED
    (the kill.request path) is reported as the node wrote it."""
    tower, ce, clock = world
    job = _held(tower, phases.QUEUED, arc_url=CE, arc_id="A1")
    tower._kill(job, "kill requested")
    tower.db.sent(r.id for r in tower.db.pending_reports(100))
    d = tower.job_dir(job)
    d.mkdir(parents=True)
    (d / "result.json").write_bytes(_result(node_end, kill_reason="KILLED" if node_end == "KILLED" else None,
                                            outputs=0 if node_end == "KILLED" else 1))
    tower.db.update(job, phase=phases.DOWNLOADED, arc_state="FINISHED")
    tower._publish_one(job)
    (back,) = tower.db.jobs()
    assert back.phase == phases.PUBLISHED and back.final_state == "KILLED"
    assert _states(tower) == reported
    end = [b for b in _bodies(tower) if b.get("state") == "KILLED"][-1]
    assert end["kill_reason"] == "KILLED"
    assert "node line" in _texts(tower)
    if node_end != "KILLED":
        assert any(f"ended {node_end} on the node before it learned of it: KILLED, none of its 1 output(s) "
                   "registered" in t for t in _texts(tower)), _texts(tower)


def test_a_kill_the_tower_never_asked_for_is_said_for_what_it_is(world: Any) -> None:
    """The payload wrote kill.request itself: its job ends KILLED as the node says, and the trace says the tower
    put no request there."""
    tower, ce, clock = world
    job = _held(tower, phases.DOWNLOADED, arc_url=CE, arc_id="A1", arc_state="FINISHED")
    d = tower.job_dir(job)
    d.mkdir(parents=True)
    (d / "result.json").write_bytes(_result("KILLED", kill_reason="KILLED", outputs=0))
    tower._publish_one(job)
    assert _states(tower) == ["STARTED", "RUNNING", "KILLED"]
    assert any("KILLED on a kill.request the tower never put there" in t for t in _texts(tower)), _texts(tower)
