"""GPU brokering through HTTP on SQLite and on a real PostgreSQL (issue 20, section 3; docs/gpus.md): the table of
tests/support/gpucases.py, each case a job of its own user and a site of its own whose agent posts the case's free
GPUs to /match; the job is assigned exactly when the pure broker says it fits, and otherwise `gridpilot why` names
the `gpus` clause with what was asked and what is free. Bad GPU terms at submit are refused naming the attribute,
and nothing is queued."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from support.central import count_jobs, expect_error, jdl, module_world, site_map
from support.gpucases import CASES, GpuCase, case_ids

from gridpilot.central import bounds


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: Any, tmp_path_factory: Any) -> Any:
    yield from module_world(request, tmp_path_factory, "gpus")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_gpu_table_through_http(world: Any, case: GpuCase) -> None:
    # A user and a site per case, the site taking only that user: what earlier cases left waiting stays out.
    user, site = f"u-{case.name}", f"G-{case.name}"
    owner = world.user(user)
    job = owner.submit(jdl(**case.jdl))
    agent = world.agent(f"pilot-{case.name}", site=site, ce=f"{site}::CE")
    got = agent.match(site_map(site=site, ce=f"{site}::CE", node=f"wn.{case.name}", users=[user], gpus=case.gpus))
    if case.matches:
        assert got is not None and got["id"] == job
        return
    assert got is None
    offer = {o["site"]: o for o in owner.why(job)["offers"]}[site]
    assert offer["clause"] == "gpus", offer
    for words in case.why:
        assert words in offer["reason"], (words, offer["reason"])


def test_the_columns_keep_the_request(world: Any) -> None:
    from sqlalchemy import select

    from gridpilot.central import schema

    job = world.user("u-columns").submit(jdl(GPU="=Radeon Instinct MI50 32GB", GPUVendor="AMD", GPUArch="gfx906",
                                             GPUCount=2))
    with world.db.read() as conn:
        r = conn.execute(select(schema.jobs).where(schema.jobs.c.id == job)).one()
    assert (r.gpus, r.gpu_name, r.gpu_model, r.gpu_vendor, r.gpu_arch) == (
        2, None, "Radeon Instinct MI50 32GB", "AMD", "gfx906")


@pytest.mark.parametrize("keys, words", [
    (dict(GPU=-1), "GPU must be at least 0"),
    (dict(GPUCount=bounds.MAX_GPUS + 1), f"GPUCount asks {bounds.MAX_GPUS + 1} GPUs"),
    (dict(GPU="=" + "M" * 300), "GPU names a GPU of 300 characters"),
    (dict(GPUArch="gfx9o6"), "GPUArch must be an NVIDIA"),
    (dict(GPUVendor="AMD\\u0000"), "GPUVendor must be a vendor name"),
])
def test_bad_gpu_terms_are_refused_at_submit(world: Any, keys: Dict[str, Any], words: str) -> None:
    before = count_jobs(world)
    with expect_error(400, "invalid_jdl") as e:
        world.user("u-bad").submit(jdl(**keys))
    assert words in e.value.message and e.value.line == 2, e.value
    assert count_jobs(world) == before
