"""Token scopes: every role against every endpoint, as one table of expected HTTP statuses.

Job A belongs to alice and runs under agent1 (job token "job"); job B belongs to alice too and runs under agent2
("other_job"); job M does not exist. The tower token is bound to A's site and CE but holds neither A nor B (one
that holds its job is tests/integration/test_central_tower.py's). The ce token is bound to A's site and CE, other_ce to another site. "ok" is
any 2xx. A job the caller may not see is answered 404 as if it did not exist, alike to the byte to M's answer
(docs/central-api.md); 403 is for a role that may not make the call at all, whatever the job.
Every row runs on SQLite and on a real PostgreSQL.
The /ce rows name A's site and CE in the body (an admin must): the ce token may repeat its own binding, other_ce
may not speak for another site.
A is running, so its owner and an admin get 409 from resubmit (the role and ownership allowed, the state not).
POST /reports answers 200 to a role that may send reports, with a result per report (other_agent's is a 404).
The kill row kills B, not A: a job whose kill is requested may register no file (409 job_killed), and A's job token
registers in a later row.
Requests that are allowed are chosen so that repeating them changes nothing that later rows depend on.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import pytest
import urllib3
from support.central import CE, SITE, jdl, module_world, site_map

from gridpilot.central import tokens

ROLES = ("anon", "expired", "revoked", "user", "other_user", "agent", "other_agent", "tower", "job", "other_job",
         "ce", "other_ce", "admin")

#                                anon exp  rev  user ouser agent oagent tower job  ojob ce   oce  admin
TABLE = """
GET  /jobs                       401  401  401  ok   ok    ok    ok     ok    403  403  ok   ok   ok
POST /jobs                       401  401  401  ok   ok    403   403    403   403  403  403  403  ok
GET  /jobs/{A}                   401  401  401  ok   404   ok    404    404   ok   404  ok   404  ok
POST /jobs/{B}/kill              401  401  401  ok   404   403   403    403   403  403  403  403  ok
POST /jobs/{A}/resubmit          401  401  401  409  404   403   403    403   403  403  403  403  409
GET  /jobs/{A}/trace             401  401  401  ok   404   ok    404    404   ok   404  ok   404  ok
POST /jobs/{A}/trace             401  401  401  403  403   ok    404    404   ok   404  403  403  ok
POST /jobs/{A}/status            401  401  401  403  403   ok    404    404   ok   404  403  403  ok
GET  /jobs/{A}/why               401  401  401  409  404   403   403    403   403  403  403  403  409
GET  /jobs/{M}/why               401  401  401  404  404   403   403    403   403  403  403  403  404
GET  /jobs/{M}                   401  401  401  404  404   404   404    404   404  404  404  404  404
POST /jobs/{M}/kill              401  401  401  404  404   403   403    403   403  403  403  403  404
POST /jobs/{M}/resubmit          401  401  401  404  404   403   403    403   403  403  403  403  404
POST /match                      401  401  401  403  403   ok    ok     ok    403  403  403  403  403
POST /queue/probe                401  401  401  403  403   ok    ok     ok    403  403  ok   ok   ok
POST /heartbeats                 401  401  401  403  403   ok    ok     ok    403  403  ok   ok   ok
POST /reports                    401  401  401  403  403   ok    ok     ok    403  403  403  403  ok
POST /catalogue/files            401  401  401  403  403   403   403    403   ok   403  403  403  ok
GET  /catalogue/files            401  401  401  ok   ok    403   403    403   ok   ok   403  403  ok
GET  /catalogue/dirs             401  401  401  ok   ok    403   403    403   ok   ok   403  403  ok
GET  /areas                      401  401  401  ok   ok    403   403    403   403  403  403  403  ok
POST /areas                      401  401  401  403  403   403   403    403   403  403  403  403  ok
POST /areas/revoke               401  401  401  403  403   403   403    403   403  403  403  403  ok
GET  /storage                    401  401  401  ok   ok    ok    ok     ok    ok   ok   ok   ok   ok
POST /storage                    401  401  401  403  403   403   403    403   403  403  403  403  ok
POST /tokens                     401  401  401  403  403   403   403    403   403  403  403  403  ok
POST /tokens/revoke              401  401  401  403  403   403   403    403   403  403  403  403  ok
POST /ce/tokens                  401  401  401  403  403   403   403    403   403  403  ok   403  ok
POST /ce/pilots                  401  401  401  403  403   403   403    403   403  403  ok   403  ok
GET  /nodes                      401  401  401  403  403   403   403    403   403  403  ok   ok   ok
POST /nodes/events               401  401  401  403  403   ok    404    403   403  403  ok   404  ok
POST /nodes/clear                401  401  401  403  403   403   403    403   403  403  403  403  ok
GET  /jobs/summary               401  401  401  ok   ok    403   403    403   403  403  403  403  ok
GET  /jobs/{A}/files             401  401  401  ok   404   403   403    403   403  403  403  403  ok
GET  /jobs/{M}/files             401  401  401  404  404   403   403    403   403  403  403  403  404
GET  /whoami                     401  401  401  ok   ok    ok    ok     ok    ok   ok   ok   ok   ok
GET  /health                     ok   ok   ok   ok   ok    ok    ok     ok    ok   ok   ok   ok   ok
GET  /metrics                    ok   ok   ok   ok   ok    ok    ok     ok    ok   ok   ok   ok   ok
"""


def _rows():
    for line in TABLE.strip().splitlines():
        method, path, *codes = line.split()
        assert len(codes) == len(ROLES), line
        for role, code in zip(ROLES, codes):
            yield pytest.param(method, path, role, code, id=f"{method} {path} as {role}")


class Setup:
    def __init__(self, world: Any) -> None:
        admin = world.admin
        self.world = world
        self.a = admin.submit(jdl(User="alice", OutputDir="/alice/a"))
        self.b = admin.submit(jdl(User="alice"))
        self.m = self.b + 1000  # no such job
        for _ in range(30):  # spare WAITING jobs for the match rows
            admin.submit(jdl(User="carol"))
        agent1, agent2 = world.agent("agent1"), world.agent("agent2")
        job_a, job_b = agent1.match(site_map()), agent2.match(site_map())
        assert (job_a["id"], job_b["id"]) == (self.a, self.b)
        for state in ("STARTED", "RUNNING"):
            agent1.set_status(self.a, state, 0)
        self.se = admin.storage_elements()[0]["name"]
        admin.register_file(lfn="/alice/a/known.root", size=1, se=self.se, pfn="file:///k", job_id=self.a)
        expired, _ = tokens.mint(world.embedded.central.keys, "admin", "root", ttl_s=1, now=time.time() - 60)
        revoked = admin.mint_token("admin", "root")
        admin.revoke_token(revoked)
        self.tokens: Dict[str, Optional[str]] = {
            "anon": None, "expired": expired, "revoked": revoked,
            "user": admin.mint_token("user", "alice"), "other_user": admin.mint_token("user", "bob"),
            "agent": agent1.token, "other_agent": agent2.token, "job": job_a["token"], "other_job": job_b["token"],
            # A tower of A's site and CE that holds neither A nor B: a tower holding its job is test_central_tower.py.
            "tower": admin.mint_token("tower", "tower1", site=SITE, ce=CE),
            "ce": world.ce().token, "other_ce": admin.mint_token("ce", "ce9", site="OTHER", ce="OTHER::CE"),
            "admin": admin.token,
        }

    def body(self, method: str, path: str) -> Optional[Dict[str, Any]]:
        if method == "GET":
            return None
        if path == "/jobs":
            return {"jdl": jdl()}
        if path.endswith(("/kill", "/resubmit")):
            return {}
        if path.endswith("/trace"):
            return {"entries": [{"category": "trace", "text": "scope test"}]}
        if path.endswith("/status"):
            return {"state": "RUNNING", "resubmission": 0}  # the state it is in: a no-op when allowed
        if path in ("/match", "/queue/probe"):
            return {"ttl": 86400, "cores": 8}
        if path == "/heartbeats":
            return {"heartbeats": [{"job_id": self.a, "resubmission": 0}]}
        if path == "/reports":
            # other_agent's request is answered 200, its one report refused 404 (test_central_tower.py).
            return {"reports": [{"job_id": self.a, "resubmission": 0, "state": "RUNNING"}]}
        if path == "/catalogue/files":
            return {"lfn": "/alice/a/out.root", "size": 5, "se": self.se, "pfn": "file:///o", "job_id": self.a}
        if path == "/storage":
            return {"name": "SCOPE::TEST::SE", "url": "file:///tmp/scope-se"}
        if path == "/tokens":
            return {"role": "user", "subject": "dave"}
        if path == "/ce/tokens":
            return {"subject": "pilot-1", "ttl_s": 600, "site": SITE, "ce": CE}
        if path == "/ce/pilots":
            return {"pilots": {"queued": 1, "running": 2}, "backend": "slurm", "site": SITE, "ce": CE}
        if path == "/areas":
            return {"user": "alice", "path": "/shared/alice"}
        if path == "/areas/revoke":
            return {"user": "nobody", "path": "/shared/nobody"}
        if path == "/nodes/events":
            # One long stall of A's node, repeated: overlapping reports count once, so the node never turns bad.
            return {"kind": "stall", "seconds": 100000, "job_id": self.a}
        if path == "/nodes/clear":
            return {"host": "node1"}
        if path == "/tokens/revoke":
            return {"token": self.world.admin.mint_token("user", "throwaway")}
        raise AssertionError(path)

    def query(self, path: str) -> Dict[str, str]:
        return {"/catalogue/files": {"lfn": "/alice/a/known.root"}, "/catalogue/dirs": {"path": "/"},
                "/areas": {}}.get(path, {})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def setup(request, tmp_path_factory):
    for world in module_world(request, tmp_path_factory, "scopes"):
        yield Setup(world)


@pytest.mark.parametrize("method, path, role, expected", list(_rows()))
def test_scope(setup, method, path, role, expected):
    named_path = path.replace("{A}", str(setup.a)).replace("{B}", str(setup.b)).replace("{M}", str(setup.m))
    real = ("" if path == "/metrics" else "/api/v1") + named_path
    headers = {"Content-Type": "application/json"}
    token = setup.tokens[role]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = setup.body(method, path)
    import orjson

    r = urllib3.request(method, setup.world.url + real, fields=setup.query(path) if method == "GET" else None,
                        body=None if body is None else orjson.dumps(body), headers=headers, retries=False)
    got = "ok" if 200 <= r.status < 300 else str(r.status)
    detail = r.data[:300].decode(errors="replace")
    assert got == expected, f"{method} {path} as {role}: expected {expected}, got {r.status}: {detail}"
    if r.status == 404:
        # As if absent: the very answer a job that does not exist gets (the job named in the path, or the body's).
        named = body["job_id"] if path == "/nodes/events" else real.split("/")[4]
        assert orjson.loads(r.data) == {"error": {"code": "job_not_found", "message": f"no job {named}"}}
    if r.status >= 400:
        err = orjson.loads(r.data)["error"]
        assert err["code"] and err["message"], "every refusal says why"
        if r.status == 401:
            want = {"anon": "unauthenticated", "expired": "token_expired", "revoked": "token_revoked"}[role]
            assert err["code"] == want
