"""The broker on what a node can do (issue 20, section 3) through HTTP, on SQLite and a real PostgreSQL: each case
of support.arch_cases is submitted by its user, an agent of a site of its own posts the case's site map to
/queue/probe (the count) and /match (the job, or none), and for a job left waiting GET /jobs/{id}/why names the
clause from the offer that agent left; under central's default settings and under strict ones (min_x86_level,
min_pilot_version, require_container). Bad values are refused at submission and at match, naming their field."""

from __future__ import annotations

from typing import Any, Dict, Iterator

import pytest
from support.arch_cases import CASES, POLICIES, Case
from support.central import World, count_jobs, expect_error, jdl, module_world, site_map


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def worlds(request, tmp_path_factory) -> Iterator[Dict[str, World]]:
    running = {name: module_world(request, tmp_path_factory, f"arch-{name}", **settings)
               for name, settings in POLICIES.items()}
    try:
        yield {name: next(gen) for name, gen in running.items()}
    finally:
        for gen in running.values():
            gen.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_broker_table(worlds: Dict[str, World], case: Case):
    world = worlds[case.policy]
    n = CASES.index(case)
    site, ce = f"ARCH{n}", f"ARCH{n}::CE"
    owner = world.user(case.user)
    job = owner.submit(jdl(**case.job))
    agent = world.agent(f"pilot-arch{n}", site=site, ce=ce)
    sm = case.site_map(site=site, ce=ce, node=f"wn{n}.{site}")
    # Only this case's job waits (every earlier one was matched or killed), so the count is this job's verdict.
    assert agent.probe(sm)["waiting"] == (1 if case.clause is None else 0)
    got = agent.match(sm)
    if case.clause is None:
        assert got is not None and got["id"] == job
        return
    assert got is None
    try:
        offers = [o for o in owner.why(job)["offers"] if o["site"] == site]
        assert len(offers) == 1 and offers[0]["clause"] == case.clause, offers
        assert offers[0]["node"] == f"wn{n}.{site}"
    finally:
        owner.kill(job)


@pytest.mark.parametrize("keys, words", [
    ({"Arch": "sparc"}, "Arch: 'sparc' is not an architecture"),
    ({"CPULevel": "x86-64-v7"}, "CPULevel: 'x86-64-v7' is not an x86-64 level"),
    ({"MinPilotVersion": "latest"}, "MinPilotVersion: 'latest' is not a version"),
    ({"Arch": "riscv64", "CPULevel": "v2"}, "CPULevel is an x86-64 level, but the job runs on riscv64"),
])
def test_bad_job_values_are_refused_at_submission(worlds: Dict[str, World], keys: Dict[str, Any], words: str):
    world = worlds["default"]
    before = count_jobs(world)
    text = jdl(**keys)
    with expect_error(400, "invalid_jdl") as e:
        world.user("alice").submit(text)
    line = len(text.splitlines())  # the key named is the last one written
    assert words in e.value.message and e.value.line == line, e.value
    assert count_jobs(world) == before


@pytest.mark.parametrize("over, field", [
    ({"x86_64_level": "v3"}, "x86_64_level"),
    ({"cpu_features": ["x" * 65]}, "cpu_features"),
    ({"pilot_version": "1.5-final"}, "pilot_version"),
    ({"containers": [{"name": "podman"}]}, "containers"),
])
def test_bad_site_map_values_are_refused_at_match(worlds: Dict[str, World], over: Dict[str, Any], field: str):
    world = worlds["default"]
    with expect_error(400, "bad_site_map") as e:
        world.agent("pilot-bad").match(site_map(**over))
    assert f"site map field '{field}'" in e.value.message, e.value


def test_step_14_keeps_the_queue_and_leaves_old_jobs_matchable_anywhere(db_url, tmp_path, request):
    """A database at step 12 with a waiting job: step 14 adds the columns (the old row's arch NULL, no level, no
    container, no minimum), the table is the one a new database gets, and the old job is matched on an aarch64
    node as it was before: it said no architecture."""
    from sqlalchemy import inspect, select

    from gridpilot.central import broker, migrations, schema
    from gridpilot.central.db import Database

    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=12)[-1] == 12
        with db.write() as conn:
            later = {c.name for cols in schema.COLUMNS_BY_VERSION.values() for c in cols}
            old = [c for c in schema.jobs.columns if c.name not in later]
            conn.execute(schema.jobs.insert().values(
                user="alice", state=1, state_since=1.0, kill_requested=False, jdl='Executable = "/bin/true";',
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0, updated=1.0
            ).returning(*old))
        assert migrations.upgrade(db) == [s.version for s in migrations.STEPS if s.version > 12]
        with db.read() as conn:
            row = conn.execute(select(schema.jobs)).one()
            cols = sorted((c["name"], c["nullable"]) for c in inspect(conn).get_columns("jobs"))
    finally:
        db.dispose()
    assert (row.arch, row.cpu_level, row.require_container, row.min_pilot_version) == (None, 0, 0, None)
    arm = broker.parse_site_map(site_map(arch="aarch64", avx=False))
    assert broker.misfit_clause(row, arm) is None
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("postgres_server")
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}" if pg is None else pg.create_database()
    fresh = Database(fresh_url)
    try:
        migrations.upgrade(fresh)
        with fresh.read() as conn:
            assert sorted((c["name"], c["nullable"]) for c in inspect(conn).get_columns("jobs")) == cols
    finally:
        fresh.dispose()
        if pg is not None:
            pg.drop_database(fresh_url)


def test_a_ce_probe_counts_jobs_an_agent_of_an_old_pilot_does_not_get(worlds: Dict[str, World]):
    """Under the strict policy a CE's probe (its site map says no arch, level, version or runtimes) still counts a
    waiting job, so the CE submits a pilot; an agent that does not say its version gets nothing, and why says so."""
    world = worlds["strict"]
    site, ce = "ARCH-CE", "ARCH-CE::CE"
    owner = world.user("carol")
    job = owner.submit(jdl())
    try:
        assert world.ce("ce-arch", site=site, ce=ce).probe({"cores": 8, "ttl": 86400})["waiting"] == 1
        old = site_map(site=site, ce=ce, node="wn-old", x86_64_level="x86-64-v3", containers=["podman"])
        assert world.agent("pilot-old", site=site, ce=ce).match(old) is None
        (offer,) = [o for o in owner.why(job)["offers"] if o["site"] == site]
        assert offer["clause"] == "pilot_version" and "does not say its version" in offer["reason"]
    finally:
        owner.kill(job)
