"""Two `gridpilot central serve` processes on one PostgreSQL, signing with one key file: a token minted by either
verifies on the other, before and across a rotation (`gridpilot central keys rotate`), a revocation on one holds on
the other, and once the old key retires both refuse its tokens and drop it from their JWKS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import jwt
import orjson
import pytest
import urllib3

from gridpilot.client import CentralClient
from gridpilot.endpoints import URL_FILE
from gridpilot.errors import CentralError, CentralUnreachable

#: How long the old key stays accepted after the rotation: long enough for the overlap checks on a loaded machine.
OVERLAP_S = 30


def gridpilot(*args: str) -> List[str]:
    return [sys.executable, "-m", "gridpilot", *args]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}


def _serve(state: Path, db_url: str, key_file: Path) -> subprocess.Popen:
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "serve.log", "wb") as log:
        return subprocess.Popen(gridpilot("central", "serve", "--db", db_url, "--state-dir", str(state),
                                          "--signing-key", str(key_file), "--port", "0", "--sweep-interval", "0",
                                          "--log-level", "warning"),
                                stdout=log, stderr=subprocess.STDOUT, env=_env())


def _url(proc: subprocess.Popen, state: Path) -> str:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, (state / "serve.log").read_text()
        assert time.monotonic() < deadline, "central serve did not come up"
        url_file = state / URL_FILE
        if url_file.exists() and url_file.read_text().strip():
            url = url_file.read_text().strip()
            try:
                CentralClient(url, None, retries=0, timeout=5).health()
                return url
            except CentralUnreachable:
                pass
        time.sleep(0.05)


@pytest.fixture
def two_centrals(tmp_path, postgres_url) -> Iterator[Tuple[List[str], str, Path, str]]:
    init_state = tmp_path / "init"
    r = subprocess.run(gridpilot("central", "init", "--db", postgres_url, "--state-dir", str(init_state)),
                       capture_output=True, text=True, timeout=180, env=_env())
    assert r.returncode == 0, r.stderr
    key_file = init_state / "signing.key"
    procs = [_serve(tmp_path / f"serve{i}", postgres_url, key_file) for i in range(2)]
    try:
        urls = [_url(p, tmp_path / f"serve{i}") for i, p in enumerate(procs)]
        yield urls, (init_state / "admin.token").read_text().strip(), init_state, postgres_url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _refused(url: str, token: str) -> str:
    """The 401's message, or '' while the token is accepted."""
    try:
        CentralClient(url, token, retries=0, timeout=30).whoami()
        return ""
    except CentralError as e:
        assert e.status == 401, e
        return str(e)


def _jwks(url: str) -> List[str]:
    r = urllib3.request("GET", url + "/.well-known/jwks.json", retries=False, timeout=30)
    return [k["kid"] for k in orjson.loads(r.data)["keys"]]


def test_tokens_cross_processes_and_a_rotation_and_the_old_key_retires(two_centrals):
    (a_url, b_url), admin_token, init_state, db_url = two_centrals
    a, b = CentralClient(a_url, admin_token, retries=0, timeout=30), CentralClient(b_url, admin_token, retries=0,
                                                                                   timeout=30)
    old_kid = jwt.get_unverified_header(admin_token)["kid"]
    minted_on_a = a.mint_token("user", "alice")
    assert CentralClient(b_url, minted_on_a).whoami()["subject"] == "alice"
    assert b.revoke_token(minted_on_a)["revoked"] is True
    assert "token revoked" in _refused(a_url, minted_on_a), "a revocation on one process holds on the other"
    old_user = b.mint_token("user", "bob")

    r = subprocess.run(gridpilot("central", "keys", "rotate", "--retire-after", f"{OVERLAP_S}s", "--db", db_url,
                                 "--state-dir", str(init_state)), capture_output=True, text=True, timeout=180,
                       env=_env())
    rotated = time.time()
    assert r.returncode == 0, r.stderr
    new_kid = r.stdout.strip()
    assert new_kid and new_kid != old_kid and f"key {old_kid} is accepted until" in r.stderr

    # Both sign with the new key from their next token on, and each accepts the other's: B meets the new key first
    # in A's token (it reads the key set again for the unknown kid), then signs with it itself.
    from_a = a.mint_token("admin", "root-a")
    assert CentralClient(b_url, from_a).whoami()["subject"] == "root-a"
    from_b = b.mint_token("user", "carol")
    assert CentralClient(a_url, from_b).whoami()["subject"] == "carol"
    assert {jwt.get_unverified_header(t)["kid"] for t in (from_a, from_b)} == {new_kid}
    # The overlap: the old key's tokens are still good on both.
    assert time.time() < rotated + OVERLAP_S, "the machine is too loaded for the overlap checks"
    for url in (a_url, b_url):
        assert _refused(url, old_user) == "" and _refused(url, admin_token) == ""
        assert _jwks(url) == [new_kid, old_kid]

    # Past the retirement, both refuse the old key's tokens, at once (the retirement time was known in advance).
    time.sleep(max(0.0, rotated + OVERLAP_S + 1 - time.time()))
    for url in (a_url, b_url):
        for token in (old_user, admin_token):
            assert f"signed with key {old_kid}, retired at" in _refused(url, token)
        assert _refused(url, from_a) == "" and _refused(url, from_b) == ""
        assert _jwks(url) == [new_kid]
    # What `keys list` says on the central machine.
    r = subprocess.run(gridpilot("central", "keys", "list", "--json", "--db", db_url, "--state-dir",
                                 str(init_state)), capture_output=True, text=True, timeout=180, env=_env())
    listed = {k["kid"]: k for k in orjson.loads(r.stdout)["keys"]}
    assert listed[new_kid]["signs_here"] and listed[new_kid]["accepted"]
    assert not listed[old_kid]["accepted"] and not listed[old_kid]["signs_here"]
