"""Central paces the pilots' kill polls (central/pacing.py): each control answer says `poll_after`, the pollers
(distinct agents holding jobs) over --control-poll-rate, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from support.central import jdl, run_through, site_map, start_world

from gridpilot.central import pacing


@pytest.fixture
def world(tmp_path, db_url):
    # Two polls a second for the whole grid: each agent holding a job adds half a second to the pace.
    yield from start_world(tmp_path / "state", db_url, control_poll_rate=2.0)


def hold(world, agents):
    """Each named agent matches one job (ASSIGNED: held); the first also runs its own to RUNNING."""
    user = world.user("alice")
    clients = []
    for i, name in enumerate(agents):
        user.submit(jdl())
        client = world.agent(name)
        job = client.match(site_map(node=f"node{i}"))
        if i == 0:
            run_through(client, job, "STARTED", "RUNNING")
        clients.append((client, job["id"]))
    return clients


def test_every_control_answer_says_the_pace_of_the_pollers_over_the_rate(world):
    # Three agents hold jobs (one of them two): three pollers, 3 / 2 per second = 1.5 s.
    (a1, j1), (a2, j2), (a3, j3) = hold(world, ["agent1", "agent2", "agent3"])
    world.user("alice").submit(jdl())
    a1.match(site_map(node="node0"))
    assert a1.control(j1, 0)[pacing.FIELD] == 1.5
    assert a2.control_many([{"job_id": j2, "resubmission": 0}])[pacing.FIELD] == 1.5
    # A refused poll is paced too: the pilot asks again all the same.
    assert a3.control(j1, 0)["rejected"] == [{"job_id": j1, "code": "job_not_found"}]
    assert a3.control(j1, 0)[pacing.FIELD] == 1.5


def test_the_count_is_kept_for_a_while_then_taken_again(world):
    hold(world, ["agent1"])
    now = [1000.0]
    pacer = pacing.Pacer(world.db, 1.0, refresh_s=30.0, clock=lambda: now[0])
    assert pacer.poll_after() == 1.0
    hold(world, ["agent2", "agent3"])
    now[0] += 29.0
    assert pacer.poll_after() == 1.0, "counted again before refresh_s"
    now[0] += 1.0
    assert pacer.poll_after() == 3.0


def test_ended_and_waiting_jobs_poll_nothing(world):
    ((agent, jid),) = hold(world, ["agent1"])
    world.user("alice").submit(jdl())  # WAITING: nobody polls for it
    assert pacing.Pacer(world.db, 1.0).poll_after() == 1.0
    agent.set_status(jid, "SAVING", 0)
    agent.set_status(jid, "DONE", 0, exit_code=0)
    assert pacing.Pacer(world.db, 1.0).poll_after() == 0.0


def test_no_pace_at_rate_zero_and_a_ceiling(world):
    hold(world, ["agent1", "agent2"])
    # Rate 0: no pace, and no count taken at all.
    pacer = pacing.Pacer(world.db, 0.0)
    assert pacer.poll_after() == 0.0 and pacer.pollers == 0
    assert pacing.Pacer(world.db, 1e-6).poll_after() == pacing.MAX_PACE_S


@pytest.mark.parametrize("value, ok", [("-1", False), ("1000001", False), ("soon", False), ("0", True),
                                       ("0.5", True), ("500", True), ("1000000", True)])
def test_the_rate_flag_is_bounded(value, ok, capsys):
    from gridpilot.cli import build_parser

    argv = ["central", "serve", "--control-poll-rate", value]
    if not ok:
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert "--control-poll-rate" in capsys.readouterr().err
        return
    assert build_parser().parse_args(argv).control_poll_rate == float(value)
