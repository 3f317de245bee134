"""Central's CPU is not the users' to take (issue 15): Requirements bounded at submission, judged outside write
transactions, and each user's share of a match; on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from support.central import CE, Raw, count_jobs, expect_error, jdl, site_map, start_world

from gridpilot.central import auth, broker, jobs, matching
from gridpilot.central.auth import Principal


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def principal(world, role: str, subject: str, **binding: Any) -> Principal:
    """A principal as central authenticates it, for operations called in this process."""
    token = world.admin.mint_token(role, subject, **binding)
    with world.db.lookup() as conn:
        return auth.authenticate(conn, world.embedded.central.verifier, f"Bearer {token}")


def never_here(tag: str, nodes: int = 4) -> str:
    """Requirements that never hold on the tests' site maps: an `||` of CE comparisons, about `nodes` nodes."""
    return " || ".join(f'other.CE == "NOWHERE::{tag}::{k}"' for k in range(max(1, (nodes - 1) // 3)))


# -- bounds --


def test_requirements_over_the_bounds_are_a_400_naming_them_and_nothing_is_stored(world):
    alice = world.user("alice")
    at_bound = never_here("a", broker.MAX_REQUIREMENTS_NODES)
    assert broker.MAX_REQUIREMENTS_NODES - 3 < 1 + 3 * len(at_bound.split(" || ")) <= broker.MAX_REQUIREMENTS_NODES
    cases = [
        # one comparison too many
        (never_here("b", broker.MAX_REQUIREMENTS_NODES + 3), "1,000"),
        # few nodes, one long string
        (f'other.CE == "{"x" * broker.MAX_REQUIREMENTS_CHARS}"', "16,384"),
        # the probe's: 850 KB of comparisons
        (never_here("c", 80_000), "1,000"),
    ]
    for text, bound in cases:
        with expect_error(400, "invalid_jdl") as e:
            alice.submit(jdl(TTL=600, Requirements=Raw(text)))
        message = e.value.message
        assert "Requirements" in message and bound in message, message
        assert e.value.line == 3, "the error points at the Requirements line"
    assert count_jobs(world) == 0
    assert alice.submit(jdl(TTL=600, Requirements=Raw(at_bound))) == 1, "at the bound is accepted"
    long_ok = f'other.CE == "{"x" * (broker.MAX_REQUIREMENTS_CHARS - 20)}"'
    assert alice.submit(jdl(TTL=600, Requirements=Raw(long_ok))) == 2


# -- the share --


@pytest.mark.parametrize("nodes", [4, broker.MAX_REQUIREMENTS_NODES], ids=["cheap", "costly"])
def test_a_hostile_users_thousand_never_matching_jobs_do_not_keep_anothers_from_matching(world, nodes):
    """mallory's 1,000 jobs, older than bob's and each with its own Requirements that never hold here, rank first;
    bob's job is still the one the first match assigns."""
    mallory = principal(world, "user", "mallory")
    now = time.time()
    # Submitted in this process (the same operation as over HTTP, without its round trips): the serving process
    # has compiled none of these texts, so the match also pays for compiling them, within mallory's share.
    for i in range(1000):
        jobs.submit(world.db, mallory, {"jdl": jdl(TTL=600, Requirements=Raw(never_here(f"m{i}", nodes)))}, now)
    good = world.user("bob").submit(jdl(TTL=600))
    agent = world.agent()
    got = agent.match(site_map())
    assert got is not None and got["id"] == good and got["user"] == "bob"
    assert agent.match(site_map()) is None, "none of mallory's jobs holds here"
    states = {j["state"] for j in world.admin.list_jobs(user="mallory", limit=1000)}
    assert states == {"WAITING"}


def test_a_user_with_many_kinds_of_jobs_alone_in_the_queue_is_matched_at_once(world):
    """A user whose first 40 distinct Requirements fail here, and nobody else waiting: their turn comes again
    within the match, so the job that fits is found at once."""
    for i in range(40):
        world.admin.submit(jdl(TTL=600, Requirements=Raw(f'other.CE == "ELSEWHERE{i}"')))
    ok = world.admin.submit(jdl(TTL=600, Requirements=Raw(f'other.CE == "{CE}"')))
    assert world.agent().match(site_map())["id"] == ok


def test_one_match_evaluates_at_most_its_budget_of_a_users_requirements(world):
    """100 costly never-holding texts: one match compiles and evaluates a bounded part of them (the user's share),
    and the next match from the same site evaluates none of those again."""
    mallory = principal(world, "user", "mallory")
    for i in range(100):
        jobs.submit(world.db, mallory, {"jdl": jdl(TTL=600, Requirements=Raw(never_here(
            f"m{i}", broker.MAX_REQUIREMENTS_NODES)))}, time.time())
    spent = []

    class Counting(broker.RequirementCache):
        def compile(self, req_hash, text):
            spent.append(("compile", req_hash))
            return super().compile(req_hash, text)

        def holds(self, req_hash, c, view, evaluate=True):
            ok, cost = super().holds(req_hash, c, view, evaluate)
            if cost:
                spent.append(("evaluate", req_hash))
            return ok, cost

    cache = Counting()
    agent = principal(world, "agent", "agent1", site="GRIDPILOT::TEST", ce=CE)
    res = matching.match(world.db, agent, site_map(), time.time(), key=world.embedded.central.key, cache=cache)
    assert res.job is None
    compiled = [h for what, h in spent if what == "compile"]
    # Compiling one 10 KB text costs more than a user's share: one per match, evaluated (its verdict then known).
    assert 1 <= len(compiled) <= 2 and len(spent) <= 2 * len(compiled), spent
    before = len(spent)
    matching.match(world.db, agent, site_map(ttl=80000), time.time(), key=world.embedded.central.key, cache=cache)
    again = [h for what, h in spent[before:] if what == "evaluate" and h in compiled]
    assert again == [], "a verdict is remembered for site maps that agree on what the expression reads"


# -- judged outside write transactions --


class WatchedDatabase:
    """The world's database, noting which threads are inside a write transaction."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.writing = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @contextmanager
    def write(self, **kw: Any) -> Iterator[Any]:
        with self._db.write(**kw) as conn:
            self.writing.active = True
            try:
                yield conn
            finally:
                self.writing.active = False


def test_requirements_are_compiled_and_evaluated_outside_write_transactions(world):
    """On SQLite a write transaction holds the database's only write lock (every heartbeat waits for it); on
    PostgreSQL the row lock. The broker's CPU must not run under either."""
    db = WatchedDatabase(world.db)
    seen = []

    class Watching(broker.RequirementCache):
        def compile(self, req_hash, text):
            seen.append(getattr(db.writing, "active", False))
            return super().compile(req_hash, text)

        def holds(self, req_hash, c, view, evaluate=True):
            seen.append(getattr(db.writing, "active", False))
            return super().holds(req_hash, c, view, evaluate)

    for i in range(5):
        world.admin.submit(jdl(TTL=600, Requirements=Raw(f'other.CE == "ELSEWHERE{i}"')))
    ok = world.admin.submit(jdl(TTL=600, Requirements=Raw(f'other.CE == "{CE}"')))
    agent = principal(world, "agent", "agent1", site="GRIDPILOT::TEST", ce=CE)
    res = matching.match(db, agent, site_map(), time.time(), key=world.embedded.central.key, cache=Watching())
    assert res.job is not None and res.job["id"] == ok
    assert len(seen) >= 6 and not any(seen), seen
