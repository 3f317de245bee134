"""Shared fixtures (real cgroups, PostgreSQL, process trees) and the level markers each directory of tests/ gives.

The levels (docs/testing.md): tests/unit/ (pure, fixtures only, seconds), tests/integration/ (real servers and
processes), tests/hostile/ (the hostile payload battery). A test's directory marks it, so nobody has to remember the
marker; a test file left in tests/ itself gets no level marker and runs in `make test` and `make test-fast`, never in
`make test-unit`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridpilot.isolation import cgroupfs

from support import proctree
from support.cgroups import make_test_cgroup
from support.paths import FIXTURES, TESTS
from support.require import REQUIRE_ALL_ENV, require_or_skip

# Re-exported for a test that still imports them from conftest (the support modules are their home).
__all__ = ["FIXTURES", "REQUIRE_ALL_ENV", "make_test_cgroup", "require_or_skip"]

pytest_plugins = ["support.xrootd_server", "support.pilot", "support.slurm_cluster", "support.images",
                  "support.runtimes", "support.arex", "support.arcnode"]

#: The directories below tests/ that are levels; each is also the marker its tests get (registered in pyproject.toml).
LEVELS = ("unit", "integration", "hostile")


#: The order the levels run in: quick ones first, so a failure shows early; the hostile battery last, so what it
#: leaves on the machine (load, a fork bomb's spent pids) falls on no other test. Unsorted files in tests/ go before it.
_RUN_ORDER = {"unit": 0, "integration": 1, "hostile": 3}


#: Set by `make test-arch` after `make wheels`: only then do the tests marked `after_wheels` (they need the foreign
#: wheels in dist/) run; every other run deselects them, so `make test` neither skips nor fails them.
AFTER_WHEELS_ENV = "GRIDPILOT_AFTER_WHEELS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get(AFTER_WHEELS_ENV):
        later = [item for item in items if item.get_closest_marker("after_wheels")]
        if later:
            config.hook.pytest_deselected(items=later)
            items[:] = [item for item in items if not item.get_closest_marker("after_wheels")]
    rank = {}
    for item in items:
        try:
            parts = item.path.resolve().relative_to(TESTS).parts
        except ValueError:  # a test outside tests/ (benches/ has its own conftest)
            rank[item] = 2
            continue
        level = parts[0] if len(parts) > 1 and parts[0] in LEVELS else None
        if level is not None:
            item.add_marker(level)
        rank[item] = _RUN_ORDER[level] if level else 2
    items.sort(key=lambda item: rank[item])  # stable: each level keeps pytest's own order


#: How long a module's pilots get to end after its last test before they count as leaked: an agent winding down
#: (upload grace, its last report to a central that is gone) on a loaded machine.
LEAK_GRACE_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def no_leaked_pilots(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the module that leaves a JobAgent or JobWrapper of this interpreter running (support/leaks.py)."""
    import time

    from support import leaks

    level = request.node.path.resolve().parent.name
    since = time.time()
    yield
    if level not in ("integration", "hostile"):
        return
    left = leaks.wait_gone(since, LEAK_GRACE_S)
    if left:
        leaks.kill(left)
        pytest.fail(f"{request.node.name} left {len(left)} pilot process(es) running "
                    f"{LEAK_GRACE_S:.0f} s after its last test (killed now): " + "; ".join(map(str, left)),
                    pytrace=False)


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    """A fresh, empty cgroup v2 directory below this test process's own cgroup, removed (members killed) after."""
    path = make_test_cgroup()
    try:
        yield path
    finally:
        cgroupfs.remove(path)


@pytest.fixture
def cgroup_fixtures() -> Path:
    """tests/fixtures/cgroup: cgroup v2 directories as on EL9 nodes, and /proc/self/{mountinfo,cgroup} captures."""
    return FIXTURES / "cgroup"


# -- central: a real PostgreSQL for the session, a fresh database per test --


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A PostgreSQL server in a temp directory for the whole session (tests/support/pgserver.py), or skip/fail."""
    from support import pgserver

    reason = pgserver.missing_reason()
    if reason is not None:
        require_or_skip(reason)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require_or_skip("psycopg is not installed (pip install -e '.[central]')")
    server = pgserver.PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """The URL of a new, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Each central test that takes this runs twice: on a SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def tree_factory() -> Iterator:
    """Spawns real process trees (tests/support/proctree.py) and kills whatever is left of them after the test."""
    made: list[proctree.Tree] = []

    def make(spec: dict) -> proctree.Tree:
        t = proctree.spawn(spec)
        made.append(t)
        return t

    yield make
    for t in made:
        t.cleanup()
