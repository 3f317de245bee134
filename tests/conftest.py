"""Shared fixtures: real cgroups for tests, the fixture directories, and the skip-or-fail rule for missing components."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs

import proctree

pytest_plugins = ["xrootd_server", "pilot_support", "slurm_cluster", "images"]

FIXTURES = Path(__file__).parent / "fixtures"

# CI installs and starts every component, so a skip there would hide a broken installation.
REQUIRE_ALL_ENV = "GRIDPILOT_REQUIRE_ALL"


def require_or_skip(reason: str) -> NoReturn:
    """Skip the test because a component is missing, or fail it when GRIDPILOT_REQUIRE_ALL is set (non-empty)."""
    if os.environ.get(REQUIRE_ALL_ENV):
        pytest.fail(f"{REQUIRE_ALL_ENV} is set, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_names = itertools.count()


def make_test_cgroup(
    mountinfo: str | Path = cgroupfs.PROC_MOUNTINFO, proc_cgroup: str | Path = cgroupfs.PROC_CGROUP
) -> Path:
    """Make a fresh child of this process's own cgroup v2, or skip (fail under GRIDPILOT_REQUIRE_ALL) saying why not.

    Below our own cgroup, never beside it: the limits the host puts on the test process then bind the test's too.
    """
    prefix = "no writable cgroup v2 hierarchy"
    try:
        parent = cgroupfs.own_v2_dir(mountinfo, proc_cgroup)
    except CgroupError as e:
        require_or_skip(f"{prefix}: {e}")
    if not cgroupfs.is_v2_dir(parent):
        require_or_skip(f"{prefix}: own cgroup {parent} is not a cgroup v2 directory")
    if not cgroupfs.can_make_children(parent):
        require_or_skip(f"{prefix}: own cgroup {parent} is not writable by uid {os.geteuid()}")
    try:
        return cgroupfs.make_child(parent, f"gridpilot-test-{os.getpid()}-{next(_names)}")
    except CgroupError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE:
            require_or_skip(f"{prefix}: {e}")
        raise


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
    """A PostgreSQL server in a temp directory for the whole session (tests/pgserver.py), or skip/fail."""
    import pgserver

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
    """Spawns real process trees (tests/proctree.py) and kills whatever is left of them after the test."""
    made: list[proctree.Tree] = []

    def make(spec: dict) -> proctree.Tree:
        t = proctree.spawn(spec)
        made.append(t)
        return t

    yield make
    for t in made:
        t.cleanup()
