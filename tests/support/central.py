"""Helpers shared by the central tests: JDL texts, site maps, a running central with clients for each role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from sqlalchemy import func, select

from gridpilot.central import schema
from gridpilot.client import CentralClient

SITE = "GRIDPILOT::TEST"
CE = "GRIDPILOT::TEST::CE1"


def jdl(executable: str = "/bin/true", **keys: Any) -> str:
    """A JDL text: Executable plus the given keys (strings quoted, numbers bare, raw=... for expressions)."""
    lines = [f'Executable = "{executable}";']
    for k, v in keys.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'};")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v};")
        elif isinstance(v, Raw):
            lines.append(f"{k} = {v.text};")
        else:
            lines.append(f'{k} = "{v}";')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Raw:
    text: str


def site_map(**over: Any) -> Dict[str, Any]:
    sm: Dict[str, Any] = {
        "ttl": 86400, "cores": 8, "memory_mb": 32000, "disk_mb": 200000, "platform": "Linux-x86_64",
        "arch": "x86_64", "avx": True, "gpus": [], "ce": CE, "site": SITE, "partition": "", "users": [],
        "nousers": [], "close_se": [], "cvmfs_revision": 1234, "node": "node1",
    }
    sm.update(over)
    return sm


@dataclass
class World:
    """A running central with an admin client and helpers to mint clients for the other roles."""

    url: str
    admin: CentralClient
    embedded: Any
    clients: Dict[str, CentralClient] = field(default_factory=dict)

    def client(self, token: str) -> CentralClient:
        return CentralClient(self.url, token, retries=0, timeout=30)

    def user(self, name: str = "alice") -> CentralClient:
        return self.client(self.admin.mint_token("user", name))

    def agent(self, name: str = "agent1", site: str = SITE, ce: str = CE) -> CentralClient:
        return self.client(self.admin.mint_token("agent", name, site=site, ce=ce))

    def ce(self, name: str = "ce1", site: str = SITE, ce: str = CE) -> CentralClient:
        return self.client(self.admin.mint_token("ce", name, site=site, ce=ce))

    @property
    def db(self) -> Any:
        return self.embedded.db


def start_world(state_dir: Path, db_url: Optional[str], **settings: Any) -> Iterator[World]:
    from gridpilot.central.serve import EmbeddedCentral

    settings.setdefault("sweep_interval_s", 0)  # tests drive the sweeper with their own clock
    with EmbeddedCentral(state_dir, db_url=db_url, **settings) as c:
        admin = CentralClient(c.url, c.admin_token, retries=0, timeout=30)
        yield World(c.url, admin, c)


def module_world(request: Any, tmp_path_factory: Any, name: str, **settings: Any) -> Iterator[World]:
    """A world for a whole test module on the database `request.param` names ("sqlite" or "postgresql", the
    module-scoped fixtures that run one table of cases on both); the PostgreSQL database is dropped after."""
    state = tmp_path_factory.mktemp(name)
    url = f"sqlite:///{state / 'central.db'}"
    pg = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        url = pg.create_database()
    try:
        yield from start_world(state, url, **settings)
    finally:
        if pg is not None:
            pg.drop_database(url)


def count_jobs(world: World) -> int:
    """Jobs in the world's database, whatever their state: what a refused request must not have changed."""
    with world.db.read() as conn:
        return conn.execute(select(func.count()).select_from(schema.jobs)).scalar_one()


def run_through(agent: CentralClient, job: Dict[str, Any], *states: str, **last: Any) -> Dict[str, Any]:
    """Report `states` in order for a matched job; keyword fields go with the last report."""
    out: Dict[str, Any] = {}
    for i, s in enumerate(states):
        fields = last if i == len(states) - 1 else {}
        out = agent.set_status(job["id"], s, job["resubmission"], **fields)
    return out


def expect_error(status: int, code: Optional[str] = None) -> Any:
    """pytest.raises for a CentralError with this status (and code)."""
    from gridpilot.errors import CentralError

    class _Check:
        def __enter__(self) -> Any:
            self._cm = pytest.raises(CentralError)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc: Any) -> bool:
            handled = self._cm.__exit__(*exc)
            e = self.info.value
            assert e.status == status, f"expected {status}, got {e.status} {e.code}: {e.message}"
            if code is not None:
                assert e.code == code, f"expected code {code}, got {e.code}: {e.message}"
            assert e.message, "every error carries a message"
            return bool(handled)

    return _Check()
