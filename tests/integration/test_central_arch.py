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
