"""Central's tokens: Ed25519-signed with a key from a 0600 file, the public keys in the database and published as a
JWKS, the WLCG profile's claims and scopes; what a forger, a stale copy or another site sends is refused with a 401
that says why; rotation keeps the old key's tokens until its retirement; a database from before (HS256) upgrades.

Every check goes through a real central over HTTP (EmbeddedCentral, or `gridpilot central serve` processes on one
PostgreSQL in test_tokens_processes.py); the forged tokens are built by hand (token_support.py)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, Optional

import jwt
import orjson
import pytest
from support import tokens as ts
import urllib3
from support.central import CE, SITE, jdl, module_world, site_map
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from gridpilot.central import keys, migrations, schema, scopes, sweeper, tokens
from gridpilot.central.db import Database
from gridpilot.central.serve import EmbeddedCentral, init
from gridpilot.central.settings import CentralSettings
from gridpilot.client import token_expires


def call(url: str, token: Optional[str], method: str = "GET", path: str = "/api/v1/whoami",
         body: Optional[Dict[str, Any]] = None) -> urllib3.BaseHTTPResponse:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return urllib3.request(method, url + path, headers=headers, retries=False, timeout=60,
                           body=None if body is None else orjson.dumps(body))


def error(r: urllib3.BaseHTTPResponse) -> Dict[str, Any]:
    return orjson.loads(r.data)["error"]


def header(token: str) -> Dict[str, Any]:
    return jwt.get_unverified_header(token)


def claims_of(token: str) -> Dict[str, Any]:
    return orjson.loads(ts.unb64(token.split(".")[1]))


# -- one central, on each database, for the forgeries --


class Forge:
    """A central and what a forger may know of it (its issuer, its JWKS) or what a test may use (its private key)."""

    def __init__(self, world: Any) -> None:
        self.world = world
        self.url = world.url
        self.central = world.embedded.central
        self.issuer = self.central.keys.issuer
        self.key = keys.load_key_file(world.embedded.settings.signing_key_path)
        self.kid = keys.thumbprint(self.key.public_key())
        self.public_raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo)

    def claims(self, **over: Any) -> Dict[str, Any]:
        return ts.payload(self.issuer, **over)

    def signed(self, **over: Any) -> str:
        """Signed with central's own key: central minted it, with these claims."""
        return ts.ed25519(self.claims(**over), self.key)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def forge(request, tmp_path_factory) -> Iterator[Forge]:
    for world in module_world(request, tmp_path_factory, "forge"):
        yield Forge(world)


def test_a_minted_token_follows_the_wlcg_profile_and_the_jwks_verifies_it(forge):
    token = forge.world.admin.mint_token("ce", "ce1", site=SITE, ce=CE, ttl_s=600)
    h, c = header(token), claims_of(token)
    assert h == {"alg": "EdDSA", "kid": forge.kid, "typ": "JWT"}
    assert set(c) == {"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "scope", "wlcg.ver", "role", "site", "ce"}
    assert (c["iss"], c["aud"], c["sub"], c["role"], c["wlcg.ver"]) == (forge.issuer, forge.issuer, "ce1", "ce", "1.0")
    assert c["nbf"] == c["iat"] and 600 <= c["exp"] - c["iat"] <= 601  # whole seconds, never shorter
    assert c["scope"].split() == [s for s in scopes.SCOPES if s in scopes.ROLE_SCOPES["ce"]]
    assert token_expires(token) == c["exp"], "the runner and the CE read exp without verifying"

    # Anyone can verify it with the published keys, through PyJWT's own JWKS client.
    client = jwt.PyJWKClient(forge.url + "/.well-known/jwks.json")
    key = client.get_signing_key_from_jwt(token)
    assert key.key_id == forge.kid
    assert jwt.decode(token, key.key, algorithms=["EdDSA"], audience=forge.issuer, issuer=forge.issuer)["sub"] == "ce1"
    r = call(forge.url, None, path="/.well-known/jwks.json")
    assert r.status == 200 and r.headers["Cache-Control"] == "public, max-age=60"
    assert orjson.loads(r.data) == {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ts.b64(forge.public_raw),
                                              "kid": forge.kid, "alg": "EdDSA", "use": "sig"}]}
    r = call(forge.url, None, path="/.well-known/openid-configuration")
    doc = orjson.loads(r.data)
    assert doc["issuer"] == forge.issuer and doc["jwks_uri"] == forge.url + "/.well-known/jwks.json"
    assert doc["scopes_supported"] == list(scopes.SCOPES)


FORGERIES = {
    # name: (how to make it, status code, what the message must say)
    "a key not in the set": (lambda f: ts.ed25519(f.claims(), Ed25519PrivateKey.generate()), "invalid_token",
                             "which is not in central's key set"),
    "a foreign key claiming central's kid": (
        lambda f: ts.ed25519(f.claims(), Ed25519PrivateKey.generate(), kid=f.kid), "invalid_token",
        "signature does not verify with key"),
    "expired": (lambda f: f.signed(iat=int(time.time()) - 900, nbf=int(time.time()) - 900,
                                   exp=int(time.time()) - 300), "token_expired", "token expired"),
    "not valid yet": (lambda f: f.signed(nbf=int(time.time()) + 600), "invalid_token", "not valid yet"),
    "another audience": (lambda f: f.signed(aud="https://other-central.example.org"), "invalid_token",
                         "meant for audience 'https://other-central.example.org', not this central"),
    "another issuer": (lambda f: f.signed(iss="https://other-central.example.org"), "invalid_token",
                       "issued by 'https://other-central.example.org', not by this central"),
    "no audience": (lambda f: f.signed(aud=None), "invalid_token", 'missing the "aud" claim'),
    "no scope claim": (lambda f: f.signed(scope=None), "invalid_token", 'missing the "scope" claim'),
    "a scope claim not a string": (lambda f: f.signed(scope=["tokens.mint"]), "invalid_token",
                                   "scope claim must be a string"),
    "an unknown role": (lambda f: f.signed(role="root"), "invalid_token", "unknown role 'root'"),
    "tampered: user made admin": (
        lambda f: ts.tampered(f.signed(role="user", subject="alice"), role="admin"), "invalid_token",
        "signature does not verify"),
    "tampered: expiry pushed back": (
        lambda f: ts.tampered(f.signed(role="admin", exp=int(time.time()) - 300), exp=int(time.time()) + 3600),
        "invalid_token", "signature does not verify"),
    "alg none, central's kid": (lambda f: ts.unsigned(f.claims(), f.kid), "invalid_token",
                                "the header says alg 'none' but key"),
    "alg none, no kid": (lambda f: ts.unsigned(f.claims(), None), "invalid_token", "names no signing key"),
    "HS256 keyed with the public key (raw), central's kid": (
        lambda f: ts.hs256(f.claims(), f.public_raw, f.kid), "invalid_token", "the header says alg 'HS256' but key"),
    "HS256 keyed with the public key (PEM), central's kid": (
        lambda f: ts.hs256(f.claims(), f.public_pem, f.kid), "invalid_token", "the header says alg 'HS256' but key"),
    "HS256 keyed with the public key (PEM), no kid": (
        lambda f: ts.hs256(f.claims(), f.public_pem), "invalid_token", "HS256 token from before the upgrade"),
    "HS256 keyed with the JWKS, no kid": (
        lambda f: ts.hs256(f.claims(), call(f.url, None, path="/.well-known/jwks.json").data), "invalid_token",
        "HS256 token from before the upgrade"),
    "a signature of zeros": (lambda f: ts.zero_signature(f.signed()), "invalid_token",
                             "signature does not verify"),
    "a kid of 1000 characters": (lambda f: ts.ed25519(f.claims(), f.key, kid="k" * 1000), "invalid_token",
                                 "names no signing key"),
    "not a JWT": (lambda f: "not.a.jwt", "invalid_token", "invalid token"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_or_unfit_token_is_refused_saying_why(forge, name):
    make, code, says = FORGERIES[name]
    r = call(forge.url, make(forge))
    assert r.status == 401, r.data
    err = error(r)
    assert err["code"] == code and says in err["message"], err


def test_a_token_is_good_from_a_little_before_nbf_until_exactly_exp(forge):
    # Minted on a machine whose clock is 10 s ahead: usable here at once (tokens.LEEWAY_S)...
    now = int(time.time())
    assert call(forge.url, forge.signed(iat=now + 10, nbf=now + 10, exp=now + 600)).status == 200
    # ...but not one from further ahead, nor one a second past its exp, which its holder planned around.
    r = call(forge.url, forge.signed(iat=now, nbf=now + 10 + int(tokens.LEEWAY_S), exp=now + 600))
    assert r.status == 401 and "not valid yet" in error(r)["message"]
    r = call(forge.url, forge.signed(iat=now - 100, nbf=now - 100, exp=now - 1))
    assert r.status == 401 and error(r)["code"] == "token_expired"
    r = call(forge.url, forge.signed(exp="tomorrow"))
    assert r.status == 401 and "exp" in error(r)["message"]


def test_a_token_never_holds_more_than_its_role_or_its_scope(forge):
    admin = forge.world.admin
    reader = admin.mint_token("user", "alice", scope="compute.read")
    assert claims_of(reader)["scope"] == "compute.read"
    assert call(forge.url, reader, path="/api/v1/jobs").status == 200
    r = call(forge.url, reader, "POST", "/api/v1/jobs", {"jdl": jdl()})
    assert r.status == 403 and error(r)["code"] == "insufficient_scope", r.data
    assert "needs scope 'compute.create'" in error(r)["message"] and "scopes are compute.read" in error(r)["message"]
    # Signed by central with a scope beyond the role: the role's set bounds it.
    greedy = forge.signed(role="user", subject="alice", scope="compute.read tokens.mint")
    assert orjson.loads(call(forge.url, greedy).data)["scope"] == "compute.read"
    r = call(forge.url, greedy, "POST", "/api/v1/tokens", {"role": "admin", "subject": "mallory"})
    assert r.status == 403 and error(r)["code"] == "insufficient_scope"
    r = call(forge.url, admin.token, "POST", "/api/v1/tokens", {"role": "user", "subject": "x", "scope": "ce.tokens"})
    assert r.status == 400 and "a user token cannot have scope 'ce.tokens'" in error(r)["message"]
    r = call(forge.url, admin.token, "POST", "/api/v1/tokens", {"role": "user", "subject": "x", "scope": 7})
    assert r.status == 400 and "scope must be a string" in error(r)["message"]


def test_every_route_that_takes_a_token_needs_a_scope():
    from starlette.routing import Route

    from gridpilot.central.app import create_app
    from gridpilot.central.ui import web
    from gridpilot.central import ui

    central = type("C", (), {"db": None, "settings": None, "keys": None, "verifier": None, "metrics": None})()
    routes = [r for r in create_app(central).routes if isinstance(r, Route)]  # type: ignore[arg-type]
    open_routes = {"/api/v1/health", "/metrics", "/.well-known/jwks.json", "/.well-known/openid-configuration"}
    seen = set()
    for r in routes:
        for method in r.methods - {"HEAD"}:
            if r.path in open_routes or r.path == "/api/v1/whoami":
                continue
            if r.path.startswith(ui.PREFIX + "/"):
                # The web view's pages take the session cookie, never a bearer token, and need one scope themselves
                # (tests/integration/test_ui_security.py walks them).
                continue
            assert scopes.for_route(method, r.path), f"{method} {r.path} has no scope in scopes.ROUTE_SCOPES"
            seen.add((method, re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path.removeprefix("/api/v1"))))
    assert seen == set(scopes.ROUTE_SCOPES), "ROUTE_SCOPES names a route that is not there"
    assert web.UI_SCOPE in scopes.SCOPES
    for role, held in scopes.ROLE_SCOPES.items():
        assert held <= set(scopes.SCOPES), role


# -- rotation within one process --


def test_rotation_signs_with_the_new_key_at_once_and_keeps_the_old_until_it_retires(tmp_path, db_url):
    with EmbeddedCentral(tmp_path / "state", db_url=db_url, sweep_interval_s=0) as c:
        admin = c.client()
        old_kid = header(c.admin_token)["kid"]
        user = admin.mint_token("user", "alice")
        path = c.settings.signing_key_path
        old_copy = tmp_path / "old-copy.key"
        old_copy.write_bytes(path.read_bytes())
        r = keys.rotate(c.db, path, 3600, time.time())
        assert r.retiring[0].kid == old_kid and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # The serving process noticed the new file: its next token is signed with the new key...
        fresh = admin.mint_token("user", "bob")
        assert header(fresh)["kid"] == r.kid != old_kid
        assert [k["kid"] for k in orjson.loads(call(c.url, None, path="/.well-known/jwks.json").data)["keys"]] == [
            r.kid, old_kid]
        # ...and the old key's tokens live on, the admin token among them.
        assert c.client(user).whoami()["kid"] == old_kid and c.client(fresh).whoami()["subject"] == "bob"
        # A process still signing with the old file cuts its tokens at the key's retirement.
        stale = keys.Keys(c.db, old_copy)
        t, claims = tokens.mint(stale, "user", "carol", ttl_s=7 * 86400)
        assert claims.expires == int(r.retire_at) and claims_of(t)["exp"] == int(r.retire_at)
        # Retired (on another machine, say): every process refuses its tokens within keys.REFRESH_S.
        with c.db.write() as conn:
            keys.retire(conn, old_kid, time.time())
        deadline = time.monotonic() + 60
        while (res := call(c.url, user)).status == 200:
            assert time.monotonic() < deadline, "the retired key's token is still accepted"
            time.sleep(0.2)
        assert res.status == 401 and f"signed with key {old_kid}, retired at" in error(res)["message"]
        assert call(c.url, c.admin_token).status == 401
        assert c.client(fresh).whoami()["subject"] == "bob"
        assert [k["kid"] for k in orjson.loads(call(c.url, None, path="/.well-known/jwks.json").data)["keys"]] == [
            r.kid]
        stale.refresh()
        with pytest.raises(keys.KeyFileError, match="retired at"):
            tokens.mint(stale, "user", "carol")
        # The sweeper forgets it; its tokens are then simply of an unknown key.
        assert sweeper.sweep(c.db).purged_keys == 1
        c.central.keys.refresh()
        r2 = call(c.url, user)
        assert r2.status == 401 and "not in central's key set" in error(r2)["message"]


def test_a_rotation_that_cannot_write_its_key_changes_nothing(tmp_path):
    settings = CentralSettings.from_args(tmp_path / "state")
    kid = init(settings).kid
    db = Database(settings.db_url)
    try:
        (tmp_path / "not-a-dir").write_text("")
        with pytest.raises(keys.KeyFileError, match="cannot write the new signing key next to"):
            keys.rotate(db, tmp_path / "not-a-dir" / "signing.key", 0, time.time())
        with db.read() as conn:
            ks = keys.read_key_set(conn)
        assert list(ks.keys) == [kid] and ks.keys[kid].retire_at is None, "the old key still signs, not retired"
    finally:
        db.dispose()


# -- the upgrade from HS256 --


def _old_token(secret: str, role: str, subject: str, **extra: Any) -> str:
    """What gridpilot minted before step 5."""
    now = int(time.time())
    payload = {"iss": "gridpilot", "sub": subject, "role": role, "jti": os.urandom(16).hex(), "iat": now,
               "exp": now + 3600, **extra}
    return jwt.encode(payload, secret, algorithm="HS256")


def test_an_hs256_database_upgrades_and_its_tokens_live_out_the_grace_period(tmp_path, db_url):
    db = Database(db_url)
    secret = "s" * 64
    try:
        assert migrations.upgrade(db, target=4) == [1, 2, 3, 4]
        with db.write() as conn:
            conn.execute(schema.settings.insert().values(key="jwt_key", value=secret))
    finally:
        db.dispose()
    old_ce = _old_token(secret, "ce", "ce1", site=SITE, ce=CE)
    old_user = _old_token(secret, "user", "alice")
    settings = CentralSettings.from_args(tmp_path / "state", db_url)
    res = init(settings)
    assert res.applied == [s.version for s in migrations.STEPS if s.version >= 5] and res.key_made and stat.S_IMODE(os.stat(res.key_file).st_mode) == 0o600
    with EmbeddedCentral(tmp_path / "state", db_url=db_url, sweep_interval_s=0) as c:
        with c.db.read() as conn:
            legacy = keys.read_key_set(conn).keys[keys.LEGACY_KID]
        assert legacy.retire_at == pytest.approx(time.time() + keys.LEGACY_GRACE_S, abs=600)
        me = c.client(old_ce).whoami()
        assert (me["role"], me["site"], me["kid"]) == ("ce", SITE, keys.LEGACY_KID)
        assert me["scope"] == scopes.to_claim(scopes.ROLE_SCOPES["ce"]), "an old token holds its role's scopes"
        assert c.client(old_ce).mint_pilot_token("pilot-1", ttl_s=600), "a CE with its old token still mints"
        assert header(c.client(old_ce).mint_pilot_token("pilot-2", ttl_s=600))["alg"] == "EdDSA"
        assert header(c.admin_token)["alg"] == "EdDSA"
        assert "hs256-legacy" not in call(c.url, None, path="/.well-known/jwks.json").data.decode()
        # An old token with a kid, or a forged one with the secret's neighbours, gets nowhere.
        assert call(c.url, ts.hs256(ts.payload("gridpilot"), secret.encode(), kid=header(c.admin_token)["kid"])
                    ).status == 401
        # Retired by the admin (`central keys retire hs256-legacy`): refused, then the secret is deleted.
        r = subprocess.run([sys.executable, "-m", "gridpilot", "central", "keys", "retire", keys.LEGACY_KID,
                            "--db", db_url, "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and f"key {keys.LEGACY_KID} retires now" in r.stderr, r.stderr
        deadline = time.monotonic() + 60
        while (res_old := call(c.url, old_user)).status == 200:
            assert time.monotonic() < deadline, "the retired HS256 token is still accepted"
            time.sleep(0.2)
        assert "signed with key hs256-legacy, retired at" in error(res_old)["message"]
        assert sweeper.sweep(c.db).purged_keys == 1
        with c.db.read() as conn:
            assert conn.execute(select(schema.settings.c.key).where(schema.settings.c.key == "jwt_key")).first() is None
        c.central.keys.refresh()
        r = call(c.url, old_ce)
        assert r.status == 401 and "HS256 token from before the upgrade" in error(r)["message"]


# -- the key file, init and serve --


def gridpilot(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, timeout=180,
                          env=env, **kw)


def test_the_key_file_is_private_whatever_the_umask_and_a_bad_one_is_one_line(tmp_path):
    state = tmp_path / "state"
    r = gridpilot("central", "init", "--state-dir", str(state), umask=0)
    assert r.returncode == 0, r.stderr
    key_file = state / "signing.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    private = keys.load_key_file(key_file)
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    assert raw not in (state / "central.db").read_bytes(), "the private key is not in the database"
    kid = keys.thumbprint(private.public_key())
    assert f"signing key: {kid} in {key_file} (made now, mode 0600)" in r.stderr
    # Run again: the key is kept. Opened up by mistake: narrowed when read.
    os.chmod(key_file, 0o644)
    r = gridpilot("central", "init", "--state-dir", str(state))
    assert r.returncode == 0 and f"signing key: {kid} in {key_file} (mode 0600)" in r.stderr, r.stderr
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    # Another file named by the flag; one that is not a key.
    other = tmp_path / "keys" / "central.key"
    r = gridpilot("central", "init", "--state-dir", str(state), "--signing-key", str(other))
    assert r.returncode == 0 and stat.S_IMODE(os.stat(other).st_mode) == 0o600, r.stderr
    assert stat.S_IMODE(os.stat(other.parent).st_mode) == 0o700
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    ec = tmp_path / "ec.key"
    ec.write_bytes(_ec_pem())
    for path, says in ((bad, f"{bad} is not an unencrypted PEM private key"),
                       (ec, f"{ec} holds a private key of type EC, not an Ed25519 key")):
        for cmd in (["init"], ["token", "--role", "user", "--subject", "x"]):
            r = gridpilot("central", *cmd, "--state-dir", str(state), "--signing-key", str(path))
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"gridpilot: {says}"), r.stderr


def _ec_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_serve_without_a_key_file_says_so_and_verify_only_serves_without_one(tmp_path):
    state = tmp_path / "state"
    assert gridpilot("central", "init", "--state-dir", str(state)).returncode == 0
    admin_token = (state / "admin.token").read_text().strip()
    elsewhere = tmp_path / "frontend"
    r = gridpilot("central", "serve", "--state-dir", str(elsewhere), "--db", f"sqlite:///{state / 'central.db'}",
                  "--port", "0")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"gridpilot: no signing key file {elsewhere / 'signing.key'}: `gridpilot central init` makes one (or copy "
        f"the key file of the host that has it; a process that only verifies tokens needs none)"]
    with EmbeddedCentral(elsewhere, db_url=f"sqlite:///{state / 'central.db'}", verify_only=True,
                         sweep_interval_s=0) as c:
        admin = c.client(admin_token)
        job = admin.submit(jdl())
        assert admin.whoami()["role"] == "admin"
        r = call(c.url, admin_token, "POST", "/api/v1/tokens", {"role": "user", "subject": "x"})
        assert r.status == 503 and error(r)["code"] == "cannot_sign" and "only verifies" in error(r)["message"]
        agent = tokens.mint(keys.Keys(c.db, state / "signing.key"), "agent", "a1", site=SITE, ce=CE)[0]
        r = call(c.url, agent, "POST", "/api/v1/match", site_map())
        assert r.status == 503 and error(r)["code"] == "cannot_sign", r.data
        assert admin.get_job(job)["state"] == "WAITING", "the match that could not sign its token assigned nothing"
        assert len(orjson.loads(call(c.url, None, path="/.well-known/jwks.json").data)["keys"]) == 1


def test_the_issuer_is_central_url_when_set_and_a_change_refuses_the_old_tokens(tmp_path):
    state = tmp_path / "state"
    r = gridpilot("central", "init", "--state-dir", str(state), "--issuer", "not a url")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--issuer: the issuer must be" in r.stderr, r.stderr
    with EmbeddedCentral(state, sweep_interval_s=0) as c:
        before = c.admin_token
        assert claims_of(before)["iss"] == keys.DEFAULT_ISSUER
        issuer = "https://central.example.org:8765"
        r = gridpilot("central", "init", "--state-dir", str(state), "--issuer", issuer, "--no-token-file")
        assert r.returncode == 0 and f"token issuer: {issuer} (was gridpilot" in r.stderr, r.stderr
        after = r.stdout.strip()
        assert (claims_of(after)["iss"], claims_of(after)["aud"]) == (issuer, issuer)
        # The serving process reads the issuer with the key set, within keys.REFRESH_S.
        deadline = time.monotonic() + 60
        while (res := call(c.url, before)).status == 200:
            assert time.monotonic() < deadline, "a token of the old issuer is still accepted"
            time.sleep(0.2)
        assert f"issued by 'gridpilot', not by this central ('{issuer}')" in error(res)["message"]
        assert call(c.url, after).status == 200
        doc = orjson.loads(call(c.url, None, path="/.well-known/openid-configuration").data)
        assert doc["issuer"] == issuer and doc["jwks_uri"] == issuer + "/.well-known/jwks.json"
