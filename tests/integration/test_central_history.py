"""Central's own history (central/history.py, schema step 17), on SQLite and a real PostgreSQL: the sweeper's loop
writes snapshots (jobs per state, the host's matches and heartbeats; with --workers the workers' sum), old ones are
pruned in batches, rates are summed over hosts and never negative when a host's counters restart, and a failing
snapshot never stops the sweeper."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, List

import pytest
from sqlalchemy import func, inspect, select, text
from support.central import jdl, site_map, start_world
from test_central_workers import serve_workers  # noqa: F401 - the fixture, used by name

from gridpilot.central import history, migrations, schema
from gridpilot.central.db import Database
from gridpilot.central.migrations import open_database
from gridpilot.central.sweeper import Sweeper

H = schema.central_history
DEADLINE_S = 120.0


def wait_for(condition: Any, what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.05)


def rows(db: Database) -> List[Any]:
    with db.read() as conn:
        return conn.execute(select(H).order_by(H.c.ts, H.c.id)).all()


@pytest.fixture
def db(db_url):
    d = open_database(db_url)
    try:
        yield d
    finally:
        d.dispose()


def test_step_17_adds_the_history_table_and_the_pilots_ends_to_a_version_16_database(db_url):
    d = Database(db_url)
    P = schema.ce_pilots
    try:
        migrations.upgrade(d, target=16)
        with d.write() as conn:
            assert not inspect(conn).has_table(H.name)
            assert "ended" not in {c["name"] for c in inspect(conn).get_columns(P.name)}
            conn.execute(text("INSERT INTO ce_pilots (site, ce, backend, queued, running, finished, failed, held, "
                              "updated) VALUES ('S', 'S::CE', 'slurm', 1, 2, 3, 4, 5, 1.0)"))
        assert migrations.upgrade(d) == [17]
        with d.read() as conn:
            assert {c["name"] for c in inspect(conn).get_columns(H.name)} == {c.name for c in H.columns}
            assert {i["name"] for i in inspect(conn).get_indexes(H.name)} == {i.name for i in H.indexes}
            assert {c["name"] for c in inspect(conn).get_columns(P.name)} == {c.name for c in P.columns}
            row = conn.execute(select(P)).one()
            assert (row.queued, row.held, row.ended) == (1, 5, None)  # a report from before: ends not reported
    finally:
        d.dispose()


def test_the_sweepers_loop_writes_snapshots_of_states_matches_and_heartbeats(tmp_path, db_url):
    world_gen = start_world(tmp_path / "state", db_url, sweep_interval_s=0.2, history_interval_s=0.2)
    world = next(world_gen)
    try:
        alice, agent = world.user("alice"), world.agent()
        alice.submit(jdl())
        job = agent.match(site_map())
        assert agent.match(site_map()) is None  # an empty match counts as a match request, not as assigned
        for _ in range(2):
            alice.submit(jdl())
        res = agent.heartbeats_full([{"job_id": job["id"], "resubmission": job["resubmission"], "sample": {}}])
        assert res["updated"] == 1, res

        def seen() -> Any:
            for r in reversed(rows(world.db)):
                if r.matches >= 2 and r.heartbeats >= 1:
                    return r
            return None
        r = wait_for(seen, "a snapshot with the matches and the heartbeat")
        assert json.loads(r.states) == {"WAITING": 2, "ASSIGNED": 1}
        assert (r.matches, r.assigned, r.heartbeats) == (2, 1, 1)
        assert r.host == history.host_name()
        # Taken again at the next passes, and read back by the overview with its rates.
        wait_for(lambda: len(rows(world.db)) >= 3, "more snapshots")
        o = history.overview(world.db, time.time(), 3600)
        assert o.states["WAITING"][-1][1] == 2 and o.hosts == [history.host_name()]
        assert all(v >= 0 for series in o.rates.values() for _, v in series)
    finally:
        next(world_gen, None)


def test_history_interval_0_writes_none(db):
    rec = history.Recorder(db, lambda: {"matches": 1}, interval_s=0, keep_s=3600, host="h")
    for _ in range(3):
        rec()
    assert rows(db) == []


def test_with_two_workers_a_snapshot_holds_both_workers_requests(serve_workers, tmp_path):  # noqa: F811
    import orjson

    server = serve_workers(2, "--sweep-interval", "1", "--history-interval", "1")
    from gridpilot.client import CentralClient
    from gridpilot.central.workers import WORKER_HEADER

    server.answering(2)  # both workers are up
    agent = CentralClient(server.url, server.admin_token, retries=0, timeout=60).mint_token(
        "agent", "agent1", site=site_map()["site"], ce=site_map()["ce"])
    headers = {"Authorization": f"Bearer {agent}", "Content-Type": "application/json", "Connection": "close"}
    served_by = set()
    n = 0
    # A connection each: the kernel hands them to either worker; go on until both served some (no job is queued:
    # every match is an empty one).
    while len(served_by) < 2 or n < 10:
        r = server.http.request("POST", server.url + "/api/v1/match", body=orjson.dumps(site_map()),
                                headers=headers)
        assert r.status in (200, 204), r.data
        served_by.add(r.headers[WORKER_HEADER])
        n += 1
        assert n < 2000, "one worker served every match"
    d = Database(server.settings.db_url)
    try:
        latest = wait_for(lambda: (lambda x: x if x is not None and x.counters["matches"] >= n else None)(
            history.latest(d)), "a snapshot after the matches")
        assert (latest.counters["matches"], latest.counters["assigned"]) == (n, 0)
    finally:
        d.dispose()
    assert server.stop() == 0


def test_pruning_deletes_only_what_is_older_than_kept_in_batches(db):
    now = 1_000_000.0
    for i in range(7):
        history.snapshot(db, "a", {}, now - 1000 + i * 100)  # 1000 to 400 s old
    history.snapshot(db, "b", {}, now)
    assert history.prune(db, now, keep_s=550, batch=2) == 2
    assert history.prune(db, now, keep_s=550, batch=2) == 2
    assert history.prune(db, now, keep_s=550, batch=2) == 1
    assert history.prune(db, now, keep_s=550, batch=2) == 0
    assert [(r.host, now - r.ts) for r in rows(db)] == [("a", 500.0), ("a", 400.0), ("b", 0.0)]


def test_the_recorder_prunes_with_each_snapshot_and_keeps_its_interval(db):
    clock = [5000.0]
    for age in (4000, 3000):
        history.snapshot(db, "old", {}, clock[0] - age)
    rec = history.Recorder(db, lambda: {"matches": 3}, interval_s=60, keep_s=3500, host="h", clock=lambda: clock[0])
    rec()
    rec()  # within the interval: nothing
    clock[0] += 59  # 5 % slack: due
    rec()
    got = [(r.host, r.ts, r.matches) for r in rows(db)]
    assert got == [("old", 2000.0, 0), ("h", 5000.0, 3), ("h", 5059.0, 3)]


def snap(db: Database, host: str, ts: float, matches: int, heartbeats: int, **states: int) -> None:
    history.snapshot(db, host, {"matches": matches, "assigned": matches // 2, "heartbeats": heartbeats}, ts)
    if states:  # the state counts as another moment's: written straight (snapshot counts the real jobs table)
        with db.write() as conn:
            last = conn.execute(select(func.max(H.c.id))).scalar_one()
            conn.execute(H.update().where(H.c.id == last).values(states=json.dumps(states)))


def test_rates_are_summed_over_hosts_and_a_restart_is_never_negative(db):
    now = 100_000.0
    # Host a: 60 matches a minute, steady. Host b: 30 a minute, restarted between its 2nd and 3rd snapshot (its
    # counter back near 0: the 10 counted by the new process are what it served then).
    for i, m in enumerate((1000, 1060, 1120)):
        snap(db, "a", now - 122 + i * 60, m, 10 * m, WAITING=5 + i)
    for i, m in enumerate((500, 530, 10)):
        snap(db, "b", now - 121 + i * 60, m, 0, WAITING=5 + i, RUNNING=1)
    r = history.rates(history.read(db, now - 600, now), now - 600)
    assert r["matches"] == pytest.approx(1.0 + 40 / 120)
    assert r["heartbeats"] == pytest.approx(10.0)
    assert r["assigned"] == pytest.approx(0.5 + (15 + 5) / 120)
    o = history.overview(db, now, 3600)
    assert o.hosts == ["a", "b"] and o.snapshots == 6
    # The states drawn are the newest snapshot's of any host: b's, which also counts RUNNING.
    assert o.states["WAITING"][-1] == (now - 1, 7.0) and o.states["RUNNING"][-1][1] == 1.0
    assert all(v >= 0 for series in o.rates.values() for _, v in series)
    assert max(v for _, v in o.rates["matches"]) <= 1.0 + 30 / 60 + 1e-9
    assert o.current["matches"] == pytest.approx(r["matches"])
    assert history.increase(530, 10) == 10 and history.increase(10, 530) == 520
    # Only the window asked for: the last 100 s hold each host's last two snapshots.
    short = history.overview(db, now, 100)
    assert short.snapshots == 4 and short.current["matches"] == pytest.approx(1.0 + 10 / 60)


def test_no_snapshots_means_no_rates(db):
    o = history.overview(db, 1000.0, 3600)
    assert o.current == {"matches": None, "assigned": None, "heartbeats": None}
    assert o.states == {} and all(v == [] for v in o.rates.values())


def test_a_failing_snapshot_is_logged_and_the_sweeper_goes_on(db, caplog):
    calls: List[float] = []

    def served() -> Dict[str, float]:
        calls.append(time.time())
        raise RuntimeError("metrics unreadable")

    rec = history.Recorder(db, served, interval_s=0.01, keep_s=3600, host="h")
    after_calls: List[int] = []

    def after() -> None:
        rec()
        after_calls.append(1)
        if len(after_calls) >= 2:
            raise ValueError("a broken hook")  # the sweeper logs it and goes on too

    sweeper = Sweeper(db, interval_s=0.02, after=after)
    with caplog.at_level(logging.ERROR):
        sweeper.start()
        try:
            wait_for(lambda: len(after_calls) >= 5, "five passes despite the failures")
        finally:
            sweeper.stop()
    assert len(calls) >= 2 and rows(db) == []
    assert "central history: snapshot failed" in caplog.text and "after the sweep" in caplog.text


@pytest.mark.parametrize("flag, value, ok", [
    ("--history-keep", "10m", False), ("--history-keep", "91d", False), ("--history-keep", "soon", False),
    ("--history-keep", "1h", True), ("--history-keep", "90d", True), ("--history-interval", "0.5", False),
    ("--history-interval", "2h", False), ("--history-interval", "0", True), ("--history-interval", "30s", True),
])
def test_the_history_flags_are_bounded(flag, value, ok, capsys):
    from gridpilot.cli import build_parser

    argv = ["central", "serve", flag, value]
    if ok:
        args = build_parser().parse_args(argv)
        assert getattr(args, flag[2:].replace("-", "_")) >= 0
        return
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert flag in capsys.readouterr().err
