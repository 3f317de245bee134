"""What central lets a user token register in the catalogue (the files `gridpilot submit` ships, `cp file:... LFN`):
only in its own area or one an admin granted it, never as a job's, never over another user's file; and which
storage element GET /storage names as the default for them. On SQLite and PostgreSQL."""

from __future__ import annotations

import orjson
import pytest
import urllib3
from support.central import expect_error, module_world

from gridpilot.client import CentralClient

SE = "SITE::USER::DISK"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    for w in module_world(request, tmp_path_factory, "userfiles", default_se=SE):
        w.admin.add_storage_element(SE, "file:///tmp/gridpilot-user-files-se")
        yield w


def _user(world, name: str, **kw) -> CentralClient:
    return CentralClient(world.url, world.admin.mint_token("user", name, **kw), retries=0)


def _file(lfn: str, size: int = 5, **kw):
    return dict(lfn=lfn, size=size, adler32="05c801f0", md5="0" * 32, se=SE, pfn=f"file:///tmp/x/{lfn[-12:]}", **kw)


def test_a_user_registers_in_its_own_area_only(world):
    alice = _user(world, "alice")
    entry = alice.register_file(**_file("/gridpilot/user/a/alice/sandbox/h1/run.sh"))
    assert entry["owner"] == "alice" and entry["job_id"] is None
    # The same file again is the same entry (a retried request), another size a conflict.
    assert alice.register_file(**_file("/gridpilot/user/a/alice/sandbox/h1/run.sh"))["size"] == 5
    with expect_error(409, "file_conflict"):
        alice.register_file(**_file("/gridpilot/user/a/alice/sandbox/h1/run.sh", size=6))
    for outside in ("/gridpilot/user/b/bob/x.sh", "/gridpilot/user/a/alicex/x.sh", "/gridpilot/user/a", "/x"):
        with expect_error(403) as e:
            alice.register_file(**_file(outside))
        assert "outside alice's areas" in e.value.message and "/gridpilot/user/a/alice" in e.value.message


def test_a_granted_area_holds_until_revoked(world):
    carol = _user(world, "carol")
    with expect_error(403):
        carol.register_file(**_file("/shared/calib/carol.txt"))
    world.admin.grant_area("carol", "/shared/calib")
    carol.register_file(**_file("/shared/calib/carol.txt"))
    world.admin.grant_area("dave", "/shared/calib")
    with expect_error(403) as e:  # dave may write there, but not over carol's file
        _user(world, "dave").register_file(**_file("/shared/calib/carol.txt"))
    assert "belongs to carol" in e.value.message
    world.admin.revoke_area("carol", "/shared/calib")
    with expect_error(403):
        carol.register_file(**_file("/shared/calib/later.txt"))


def test_a_user_never_registers_a_jobs_file(world):
    with expect_error(403) as e:
        _user(world, "erin").register_file(**_file("/gridpilot/user/e/erin/out.txt", job_id=1))
    assert "omit job_id" in e.value.message


def test_a_user_token_without_catalogue_write_is_refused(world):
    reader = _user(world, "frank", scope="compute.read catalogue.read")
    with expect_error(403, "insufficient_scope"):
        reader.register_file(**_file("/gridpilot/user/f/frank/x.txt"))


@pytest.mark.parametrize("field, value", [("lfn", "relative/x"), ("lfn", "/a/../b"), ("size", -1),
                                          ("size", "5"), ("adler32", "not-hex"), ("md5", "1" * 33),
                                          ("se", "NO::SUCH::SE"), ("pfn", 7)])
def test_bad_fields_are_400_naming_them(world, field, value):
    body = _file("/gridpilot/user/g/grace/x.txt")
    body[field] = value
    token = world.admin.mint_token("user", "grace")
    r = urllib3.request("POST", f"{world.url}/api/v1/catalogue/files", body=orjson.dumps(body),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        retries=False)
    assert r.status == 400, r.data
    err = orjson.loads(r.data)["error"]
    assert err.get("field") == field and err["message"], err


def test_get_storage_names_the_default(world):
    answer = _user(world, "heidi").request("GET", "/api/v1/storage", idempotent=True)[1]
    assert answer["default"] == SE
    assert SE in [e["name"] for e in answer["elements"]]
