"""`gridpilot why ID` (issue 19): agents' real match requests leave their offers at central, and GET
/jobs/{id}/why names, per offer, the first clause that fails for a WAITING job; on SQLite and on a real PostgreSQL,
through the HTTP API and the CLI."""

from __future__ import annotations

import sqlite3
import time

import orjson
import pytest
from support.central import Raw, expect_error, jdl, site_map, start_world
from sqlalchemy import func, select

from gridpilot.central import db as db_module
from gridpilot.central import migrations, offers, schema, sweeper
from gridpilot.central.broker import parse_site_map
from gridpilot.cli import main
from gridpilot.client import CentralClient
from gridpilot.states import CONTAINER_GIVE_BACK


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


#: One slot per site and CE, each lacking one thing the job below needs (site map overrides).
SLOTS = {
    "S-cores": {"cores": 2},
    "S-ttl": {"ttl": 540},
    "S-memory": {"memory_mb": 4000},
    "S-disk": {"disk_mb": 20000},
    "S-arch": {"arch": "aarch64"},
    "S-packages": {},
}
NEEDS = dict(CPUCores=4, TTL=600, MemorySize="8GB", WorkDirectorySize="50GB",
             Requirements=Raw('other.Arch == "x86_64" && member(other.Packages, "VO_ALICE@O2::1")'))


def ask_for_work(world, site: str, **over) -> None:
    """An agent of this site's CE posts its site map to /match, as a pilot does; nothing fits, so nothing is
    assigned."""
    agent = world.agent(f"pilot-{site}", site=site, ce=f"{site}::CE")
    assert agent.match(site_map(site=site, ce=f"{site}::CE", node=f"wn.{site}", Packages=["VO_ALICE@O1::9"],
                                **over)) is None


def by_site(answer):
    return {o["site"]: o for o in answer["offers"]}


def test_why_names_the_failing_clause_of_each_offer(world):
    alice = world.user("alice")
    job = alice.submit(jdl(**NEEDS))
    gpu_job = alice.submit(jdl(GPU="A100"))
    for site, over in SLOTS.items():
        ask_for_work(world, site, **over)
    # A plain job submitted after the offers: the offers kept still answer for it.
    plain = alice.submit(jdl(TTL=600))

    got = by_site(alice.why(job))
    assert set(got) == set(SLOTS)
    expect = {
        "S-cores": ("cores", "needs 4 cores, slot has 2"),
        "S-ttl": ("ttl", "needs TTL 600 s, slot has 540 s left"),
        "S-memory": ("memory", "needs 8192 MB of memory, slot has 4000 MB"),
        "S-disk": ("disk", "needs 51200 MB of disk, slot has 20000 MB"),
        # The job runs on x86_64 (the default): the broker's own arch clause fails before its Requirements.
        "S-arch": ("arch", "needs x86_64, node is aarch64"),
        "S-packages": ("requirements", 'Requirements fail at member(other.Packages, "VO_ALICE@O2::1") '
                                       '(other.Packages is {"VO_ALICE@O1::9"})'),
    }
    for site, (clause, reason) in expect.items():
        o = got[site]
        assert (o["clause"], o["reason"]) == (clause, reason), o
        assert o["ce"] == f"{site}::CE" and o["node"] == f"wn.{site}" and time.time() - o["seen"] < 600
    assert got["S-ttl"]["offer"]["ttl"] == 540 and got["S-arch"]["offer"]["arch"] == "aarch64"

    gpus = by_site(alice.why(gpu_job))
    assert gpus["S-packages"]["clause"] == "gpus" and "needs 1 GPU(s) matching 'A100', slot has 0" in \
        gpus["S-packages"]["reason"]
    fine = by_site(alice.why(plain))
    # An x86_64 job (the default) never goes to an aarch64 node.
    assert fine["S-packages"]["clause"] == "would match" and fine["S-arch"]["clause"] == "arch"
    assert fine["S-ttl"]["clause"] == "ttl"
    # And the broker agrees: the next pilot of the shape that "would match" takes it.
    agent = world.agent("pilot-S-packages", site="S-packages", ce="S-packages::CE")
    taken = agent.match(site_map(site="S-packages", ce="S-packages::CE", node="wn.S-packages"))
    assert taken is not None and taken["id"] == plain


def test_why_is_the_owners_and_only_for_a_waiting_job(world):
    alice, bob = world.user("alice"), world.user("bob")
    job = alice.submit(jdl(TTL=600))
    with expect_error(404, "job_not_found"):
        bob.why(job)
    with expect_error(404, "job_not_found"):
        alice.why(999_999)
    with expect_error(403):
        world.agent().why(job)
    assert world.admin.why(job)["state"] == "WAITING"
    alice.kill(job)
    with expect_error(409, "job_not_waiting") as e:
        alice.why(job)
    assert "KILLED" in e.value.message


def test_a_shape_is_written_at_most_every_few_seconds_and_a_ce_keeps_few(world):
    db, rec = world.db, offers.Recorder()
    site = parse_site_map(site_map(site="S1", ce="S1::CE", ttl=7200))
    body = site_map(site="S1", ce="S1::CE", ttl=7200)
    assert rec.record(db, site, body, 1000.0)
    assert not rec.record(db, site, body, 1000.0 + offers.WRITE_EVERY_S / 2), "one write per shape per few seconds"
    # A slot of the same shape with less time left is the same shape: its row is rewritten, not added.
    later = parse_site_map(site_map(site="S1", ce="S1::CE", ttl=3600))
    assert rec.record(db, later, site_map(site="S1", ce="S1::CE", ttl=3600), 1000.0 + offers.WRITE_EVERY_S)
    with db.read() as conn:
        rows = conn.execute(select(schema.match_offers)).all()
    assert len(rows) == 1 and rows[0].seen == 1000.0 + offers.WRITE_EVERY_S
    assert orjson.loads(rows[0].offer)["ttl"] == 3600
    for cores in range(1, offers.MAX_SHAPES + 5):
        sm = site_map(site="S1", ce="S1::CE", cores=cores)
        assert rec.record(db, parse_site_map(sm), sm, 2000.0 + cores)
    with db.read() as conn:
        kept = conn.execute(select(func.count()).select_from(schema.match_offers)).scalar_one()
        oldest = conn.execute(select(func.min(schema.match_offers.c.seen))).scalar_one()
    assert kept == offers.MAX_SHAPES and oldest == 2000.0 + 5, "the newest shapes are kept"


def test_cli_prints_one_line_per_offer_and_json(world, capsys, monkeypatch, tmp_path):
    ask_for_work(world, "S-ttl", ttl=540)
    job = world.admin.submit(jdl(TTL=600))
    token = tmp_path / "admin.token"
    token.write_text(world.embedded.admin_token)
    conn = ["--url", world.url, "--token-file", str(token)]
    assert main(["why", str(job), *conn]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("S-ttl/S-ttl::CE (wn.S-ttl), seen ")
    assert out[0].endswith("ttl: needs TTL 600 s, slot has 540 s left")
    assert main(["why", str(job), "--json", *conn]) == 0
    assert orjson.loads(capsys.readouterr().out)["offers"][0]["clause"] == "ttl"
    world.admin.kill(job)
    assert main(["why", str(job), *conn]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is KILLED, not WAITING" in err


def test_a_real_pilot_s_match_requests_answer_why(tmp_path):
    """The issue's case end to end: a JobRunner whose slot has 600 s (LocalGrid, embedded SQLite central) asks for
    work with one core; a job with a TTL of 600 s, one asking two cores, and one whose Requirements want
    another architecture never match, and `why` says which clause each fails there."""
    from gridpilot.testing import LocalGrid

    with LocalGrid(tmp_path / "grid") as grid:
        ttl = grid.user.submit(jdl(TTL=600))
        cores = grid.user.submit(jdl(TTL=60, CPUCores=2))
        arch = grid.user.submit(jdl(TTL=60, Requirements=Raw('other.Arch == "no-such-arch"')))
        grid.start_runner(slot_ttl=600, cores=1, max_empty_matches=1000)
        deadline = time.monotonic() + 120
        while not grid.user.why(ttl)["offers"]:
            assert time.monotonic() < deadline, "the pilot's match request never reached central's offers"
            assert grid.runner is not None and grid.runner.poll() is None, "the runner ended before asking"
            time.sleep(0.2)
        answers = {job: grid.user.why(job)["offers"] for job in (ttl, cores, arch)}
        grid.stop_runner()
    for job, clause, words in ((ttl, "ttl", "needs TTL 600 s, slot has "), (cores, "cores", "needs 2 cores, slot has 1"),
                               (arch, "requirements", 'Requirements fail at other.Arch == "no-such-arch"')):
        (offer,) = answers[job]
        assert (offer["site"], offer["ce"]) == ("LOCAL", "LOCAL::CE")
        assert offer["clause"] == clause and words in offer["reason"], offer
    assert answers[ttl][0]["offer"]["ttl"] <= 600


def test_a_large_offer_keeps_what_the_broker_reads_and_an_unreadable_one_is_said(world):
    db, rec = world.db, offers.Recorder()
    big = site_map(site="S-big", ce="S-big::CE", arch="aarch64",
                   Packages=[f"VO_ALICE@Pkg::{'x' * 200}{i}" for i in range(100)])
    assert rec.record(db, parse_site_map(big), big, time.time())
    with db.read() as conn:
        (text,) = conn.execute(select(schema.match_offers.c.offer)).one()
    assert len(text) <= offers.MAX_OFFER_CHARS and "Packages" not in text and orjson.loads(text)["arch"] == "aarch64"
    with db.write() as conn:
        conn.execute(schema.match_offers.insert().values(site="S-old", ce="S-old::CE", shape="0" * 40,
                                                          seen=time.time(), node=None, offer="{not json"))
    alice = world.user("alice")
    got = by_site(alice.why(alice.submit(jdl(CPUCores=1, Arch="aarch64"))))
    assert got["S-old"]["clause"] == "unreadable" and got["S-big"]["clause"] == "would match"


def test_two_central_processes_on_one_postgresql_give_the_same_answer(tmp_path, postgres_url):
    """The offers are in the database, not in a process: an agent's match request taken by one central is the
    answer of the other."""
    from gridpilot.central.serve import EmbeddedCentral

    with EmbeddedCentral(tmp_path / "a", db_url=postgres_url, sweep_interval_s=0) as a, \
            EmbeddedCentral(tmp_path / "b", db_url=postgres_url, sweep_interval_s=0) as b:
        admin_a = a.client()
        job = admin_a.submit(jdl(TTL=600, User="alice"))
        agent_token = admin_a.mint_token("agent", "pilot-A", site="S-pg", ce="S-pg::CE")
        assert CentralClient(a.url, agent_token, retries=0).match(site_map(site="S-pg", ce="S-pg::CE",
                                                                          ttl=500)) is None
        alice_at_b = CentralClient(b.url, admin_a.mint_token("user", "alice"), retries=0)
        (offer,) = [o for o in alice_at_b.why(job)["offers"] if o["site"] == "S-pg"]
    assert offer["clause"] == "ttl" and offer["reason"] == "needs TTL 600 s, slot has 500 s left"


def test_an_offer_that_cannot_be_written_never_fails_the_match(tmp_path, monkeypatch):
    """SQLite busy past its timeout (another process holds the write lock): the offer is dropped with a warning,
    the match request is not failed for it, and the shape's next request writes it."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "central.db"
    db = migrations.open_database(f"sqlite:///{path}")
    rec = offers.Recorder()
    sm = site_map(site="S-busy", ce="S-busy::CE")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert not rec.record(db, parse_site_map(sm), sm, 1000.0)
        other.execute("ROLLBACK")
        assert rec.record(db, parse_site_map(sm), sm, 1000.5), "not written, so not throttled"
    finally:
        other.close()
        db.dispose()


def test_the_sweeper_drops_offers_of_a_ce_that_stopped_asking(world):
    rec = offers.Recorder()
    for site, seen in (("S-gone", 1000.0), ("S-here", 1000.0 + offers.KEEP_S)):
        sm = site_map(site=site, ce=f"{site}::CE")
        assert rec.record(world.db, parse_site_map(sm), sm, seen)
    report = sweeper.sweep(world.db, now=1000.0 + offers.KEEP_S + 1)
    with world.db.read() as conn:
        left = conn.execute(select(schema.match_offers.c.site)).scalars().all()
    assert report.purged_offers == 1 and left == ["S-here"]


#: The kinds of mismatch `why` names, end to end: per kind a job (JDL keys), the slot of a site of its own that
#: lacks what it asks (site map overrides), the clause named and words of the reason. `container` is the pilot's
#: give-back (the job's trace), the others the broker's clauses and Requirements.
KINDS = {
    "cores": (dict(CPUCores=4), dict(cores=2), "cores", "needs 4 cores, slot has 2"),
    "ttl": (dict(TTL=600), dict(ttl=540), "ttl", "needs TTL 600 s, slot has 540 s left"),
    "memory": (dict(MemorySize="8GB"), dict(memory_mb=4000), "memory", "needs 8192 MB of memory, slot has 4000 MB"),
    "disk": (dict(WorkDirectorySize="50GB"), dict(disk_mb=20000), "disk", "needs 51200 MB of disk, slot has 20000 MB"),
    "arch": (dict(Requirements=Raw('other.Arch == "aarch64"')), dict(arch="x86_64"), "requirements",
             'Requirements fail at other.Arch == "aarch64" (other.Arch is "x86_64")'),
    "platform": (dict(Requirements=Raw('other.Platform == "Linux-ppc64le"')), dict(platform="Linux-x86_64"),
                 "requirements", 'other.Platform == "Linux-ppc64le" (other.Platform is "Linux-x86_64")'),
    "gpu": (dict(GPU="A100"), dict(gpus=[]), "gpus", "needs 1 GPU(s) matching 'A100', slot has 0"),
    "users": (dict(), dict(nousers=["alice"]), "users", "user 'alice' is excluded by the site"),
    "requirements": (dict(Requirements=Raw('member(other.Packages, "VO_ALICE@O2::1")')), {}, "requirements",
                     'member(other.Packages, "VO_ALICE@O2::1") (other.Packages is {"VO_ALICE@O1::9"})'),
    "container": (dict(Platform="el7"), {}, "container", "took it and gave it back: " + CONTAINER_GIVE_BACK),
}


def test_why_names_each_kind_of_mismatch(world):
    """One job per kind, one site per kind whose slot lacks just that: each job's answer at its site names the
    clause. The container case as a pilot makes it: its agent takes the job, finds no container that works for it
    on its node (the site requires one) and gives it back with agent.py's message; the broker would match it again,
    so only the give-back can say why it never runs there."""
    alice = world.user("alice")
    agents = {}
    for kind, (_, over, _, _) in KINDS.items():
        site = f"K-{kind}"
        agents[kind] = world.agent(f"pilot-{site}", site=site, ce=f"{site}::CE")
        sm = site_map(site=site, ce=f"{site}::CE", node=f"wn.{site}", Packages=["VO_ALICE@O1::9"], **over)
        if kind != "container":
            # Asked before the jobs are there (nothing to take), as a site's pilots ask all the time.
            assert agents[kind].match(sm) is None
    jobs = {"container": alice.submit(jdl(**KINDS["container"][0]))}
    got = agents["container"].match(site_map(site="K-container", ce="K-container::CE", node="wn.K-container"))
    assert got is not None and got["id"] == jobs["container"]
    message = f"{CONTAINER_GIVE_BACK} (platform el7; image: no image suits el7): podman: no such image"
    agents["container"].set_status(got["id"], "WAITING", got["resubmission"], message=message)
    jobs.update({kind: alice.submit(jdl(**keys)) for kind, (keys, _, _, _) in KINDS.items() if kind != "container"})
    answered = set()
    for kind, (_, _, clause, words) in KINDS.items():
        offer = by_site(alice.why(jobs[kind]))[f"K-{kind}"]
        assert offer["clause"] == clause and words in offer["reason"], (kind, offer)
        answered.add(clause)
    assert len(KINDS) >= 6 and len(answered) >= 6
    # The give-back is this site's and CE's: the other slots would still take the container job.
    others = by_site(alice.why(jobs["container"]))
    assert others["K-requirements"]["clause"] == "would match" and others["K-cores"]["clause"] == "would match"
    assert "a pilot on wn.K-container took it" in others["K-container"]["reason"]


def test_a_real_pilot_s_container_give_back_answers_why(tmp_path, image_dir):
    """The container clause end to end with a real JobRunner: its site requires containers (bubblewrap, a working
    default image, so the node takes jobs), and the image its images directory has for the job's platform (el7)
    cannot run anything. The broker gives the job to the pilot, which gives it back; `why` says so for that site."""
    import shutil

    from support.require import require_or_skip

    from gridpilot.testing import LocalGrid

    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    images = tmp_path / "images"
    (images / "el7-x86_64").mkdir(parents=True)  # no root file system: nothing runs in it
    with LocalGrid(tmp_path / "grid") as grid:
        job = grid.user.submit(jdl(TTL=60, Platform="el7"))
        grid.start_runner(container_runtime="bwrap", require_container=True, default_image=str(image_dir),
                          images_dir=str(images), max_empty_matches=1000)
        deadline = time.monotonic() + 120
        while CONTAINER_GIVE_BACK not in "\n".join(e["text"] for e in grid.user.trace(job)):
            assert time.monotonic() < deadline, "the pilot never gave the job back"
            assert grid.runner is not None and grid.runner.poll() is None, "the runner ended"
            time.sleep(0.3)
        grid.stop_runner()
        # A runner stopped while it held the job again gives it back too: the job waits, as it would for ever.
        deadline = time.monotonic() + 60
        while grid.user.get_job(job)["state"] != "WAITING":
            assert time.monotonic() < deadline, grid.user.get_job(job)
            time.sleep(0.3)
        offers = grid.user.why(job)["offers"]
    assert offers, "the pilot's match requests left no offer"
    for offer in offers:  # one per shape the slot had (its free cores change as it takes the job)
        assert (offer["site"], offer["ce"], offer["clause"]) == ("LOCAL", "LOCAL::CE", "container"), offer
        assert CONTAINER_GIVE_BACK + " (platform el7" in offer["reason"] and "bwrap" in offer["reason"], offer
