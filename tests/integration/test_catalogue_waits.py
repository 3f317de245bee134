"""The JobWrapper's catalogue client waits out central (pilot/staging.py, issue 15) against a real central, on
SQLite and on PostgreSQL, behind a proxy that answers 503 for a while: a registration waits and registers once, a
refusal is not waited out, and a wait that must end (SIGTERM, the job token's expiry) ends with the uploaded copy
removed. Waits are driven by a test clock: no real sleeping."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import List

import orjson
import pytest
from support.central_proxy import CentralProxy
from support.central import jdl, site_map, start_world

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError
from gridpilot.pilot.protocol import Handover
from gridpilot.pilot.staging import SERVER_ERRORS_LIMIT, CatalogueGivenUp, CentralCatalogue, Stager
from gridpilot.storage.catalogue_protocol import FileEntry, Replica
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.registry import Registry
from gridpilot.storage.transfers import OutputSpec, StageOutcome, stage_out

SE = "TEST::WAITS::FILE"
REGISTER = "/api/v1/catalogue/files"


@pytest.fixture
def world(tmp_path, db_url):
    for world in start_world(tmp_path / "state", db_url):
        world.admin.add_storage_element(SE, f"file://{tmp_path}/se")
        yield world


class Clock:
    """A monotonic clock that only the waits' sleeps move."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def job_catalogue(world, url: str, **kw):
    """A matched job, and its CentralCatalogue (job token) on `url`, with a test clock."""
    world.admin.submit(jdl())
    job = world.agent().match(site_map())
    clock = Clock()
    lines: List[str] = []
    cat = CentralCatalogue(CentralClient(url, job["token"], retries=0), job["id"], trace=lines.append, clock=clock,
                           sleep=clock.sleep, **kw)
    return job, cat, clock, lines


def refuse_registrations(state):
    def rule(method: str, path: str):
        if method == "POST" and path.startswith(REGISTER) and state["left"] > 0:
            state["left"] -= 1
            return 503
        return None
    return rule


def test_a_registration_waits_for_central_with_capped_backoff_and_registers_once(world):
    state = {"left": 12}
    proxy = CentralProxy(world.url, refuse_registrations(state))
    try:
        job, cat, clock, lines = job_catalogue(world, proxy.url, wait_base_s=1.0, wait_max_s=15.0)
        lfn = f"{job['output_dir']}/out.txt"
        cat.register(FileEntry(lfn, 5, "0a0b0c0d", None, (Replica(SE, "file:///se/ab/abc"),)))
    finally:
        proxy.close()
    assert state["left"] == 0 and proxy.answered("POST", REGISTER, 503) == 12
    entry = world.admin.lookup_file(lfn)
    assert entry["replicas"] == [{"se": SE, "pfn": "file:///se/ab/abc"}] and entry["size"] == 5
    # 12 waits, doubling from 1 s up to 15 s, each in the upper half of its step (jitter): about 2.5 minutes.
    steps = [min(15.0, 2.0 ** i) for i in range(12)]
    assert 0.5 * sum(steps) <= clock.t <= sum(steps) + 0.01, clock.t
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"registration of {lfn} ({SE} file:///se/ab/abc) waits for central")
    assert "503" in lines[0]
    assert lines[1].startswith(f"registration of {lfn} ({SE} file:///se/ab/abc): central answered after ")


def test_a_refusal_is_not_waited_out(world):
    job, cat, clock, lines = job_catalogue(world, world.url)
    with pytest.raises(CentralError) as e:
        # Outside the job's OutputDir: central refuses it, and asking again would not change that.
        cat.register(FileEntry("/elsewhere/out.txt", 5, None, None, (Replica(SE, "file:///se/ab/abc"),)))
    assert e.value.status == 403
    assert clock.slept == [] and lines == []


def test_a_wait_told_to_stop_ends_and_staging_removes_the_copy_it_could_not_register(world, tmp_path):
    state = {"left": 10**6}
    stop = {"after": 3}

    def give_up():
        stop["after"] -= 1
        return "the JobWrapper was told to stop" if stop["after"] < 0 else None

    proxy = CentralProxy(world.url, refuse_registrations(state))
    try:
        job, cat, clock, lines = job_catalogue(world, proxy.url, give_up=give_up)
        se = LocalStorageElement(SE, f"file://{tmp_path}/se")
        work = tmp_path / "work"
        work.mkdir()
        (work / "out.txt").write_text("result\n")
        result = stage_out([OutputSpec("out.txt")], work, job["output_dir"], Registry([se]), cat, [SE])
    finally:
        proxy.close()
    assert result.outcome is StageOutcome.FAILED
    assert [p for p in Path(tmp_path / "se").rglob("*") if p.is_file()] == [], "the unregistered copy is removed"
    (problem,) = [t for t in result.trace if "registration failed" in t]
    assert "CatalogueGivenUp" in problem and "the JobWrapper was told to stop" in problem, problem
    assert problem.endswith("(copy removed)"), problem
    assert proxy.answered("POST", REGISTER, 503) >= 1
    with pytest.raises(CentralError) as e:
        world.admin.lookup_file(f"{job['output_dir']}/out.txt")
    assert e.value.status == 404


def test_a_call_central_keeps_failing_on_while_it_is_healthy_gives_up(world):
    """A 500 on registrations only (a central bug), its health check answering: not an outage to wait out for a
    day. SERVER_ERRORS_LIMIT tries, then the registration gives up (and staging would remove the copy)."""
    proxy = CentralProxy(world.url, lambda method, path: 500 if method == "POST" and path.startswith(REGISTER)
                         else None)
    try:
        job, cat, clock, lines = job_catalogue(world, proxy.url)
        with pytest.raises(CatalogueGivenUp, match="central failed on it 10 times in a row while answering its health"):
            cat.register(FileEntry(f"{job['output_dir']}/out.txt", 5, None, None, (Replica(SE, "file:///se/a"),)))
    finally:
        proxy.close()
    assert proxy.answered("POST", REGISTER, 500) == SERVER_ERRORS_LIMIT
    assert proxy.answered("GET", "/api/v1/health", 200) == 1


def test_a_central_failing_on_everything_is_waited_for(world):
    """Its database down, central answers 500 to everything, its health check too: an outage, waited out."""
    down = {"on": True}
    proxy = CentralProxy(world.url, lambda method, path: 500 if down["on"] else None)
    try:
        job, cat, clock, lines = job_catalogue(world, proxy.url)
        real_sleep = cat.sleep

        def sleep(s: float) -> None:
            real_sleep(s)
            if clock.t > 300:
                down["on"] = False  # five minutes on, the database is back

        cat.sleep = sleep
        cat.register(FileEntry(f"{job['output_dir']}/out.txt", 5, None, None, (Replica(SE, "file:///se/a"),)))
    finally:
        proxy.close()
    assert proxy.answered("POST", REGISTER, 500) > SERVER_ERRORS_LIMIT
    assert world.admin.lookup_file(f"{job['output_dir']}/out.txt")["replicas"] == [{"se": SE, "pfn": "file:///se/a"}]


def fake_token(exp: float) -> str:
    """A token-shaped string with only an `exp` claim: what the Stager reads to plan around the job token's life."""
    claims = base64.urlsafe_b64encode(orjson.dumps({"exp": exp})).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{claims}.sig"


def test_the_stager_stops_waiting_when_told_to_stop_or_once_the_job_token_has_expired(tmp_path):
    def stager(token: str, stopping=lambda: False) -> Stager:
        handover = Handover(job_id=7, central_url="http://127.0.0.1:9", token=token,
                            storage=[{"name": SE, "url": f"file://{tmp_path}/se"}])
        return Stager(handover, tmp_path, lambda _: None, stopping=stopping)

    assert stager(fake_token(4102444800.0))._give_up() is None
    assert "expired" in (stager(fake_token(1.0))._give_up() or "")
    assert "told to stop" in (stager(fake_token(4102444800.0), stopping=lambda: True)._give_up() or "")
    # A token that says nothing of its expiry: only a stop ends the wait.
    assert stager("not-a-jwt")._give_up() is None
    with pytest.raises(CatalogueGivenUp):
        s = stager(fake_token(1.0))
        s.catalogue.sleep = lambda _: None
        s.catalogue.register(FileEntry("/x/y", 1, None, None, (Replica(SE, "file:///se/x"),)))
