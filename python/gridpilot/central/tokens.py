"""JWT tokens: minting, verifying, revocation.

A token is a JWS signed with central's current Ed25519 key (keys.py), its header naming the key (`kid`), its claims
after the WLCG token profile where they map:

- `iss`: central's issuer (keys.read_issuer: `central init --issuer`, "gridpilot" unless set);
- `aud`: the same: central is the service its tokens are for, and it refuses one meant for another;
- `sub` (who), `jti` (this token, for revocation), `iat`, `nbf` (= iat), `exp`;
- `scope`: space-separated (scopes.py), the role's or fewer; `wlcg.ver`: the profile's version;
- gridpilot's own: `role` (user, agent, job, ce, tower, admin); `site` and `ce` for agent, ce and tower tokens; `job`
  and `resub`
  (the job's resubmission counter) for job tokens.

Verifying takes the key by the header's kid and the algorithm from the key, never from the token; then checks the
signature, iss, aud, exp (to the second: the holder plans around it), nbf and iat (LEEWAY_S early: a token minted on
one machine is used at once on another, whose clock may be behind) and the claims the role needs.
A kid-less HS256 token is one from before schema step 6, checked with the old secret until that retires
(keys.LEGACY_KID); it holds its role's scopes. A revoked token is listed by jti in `revoked_tokens` (every process
looks there on every request) until it would have expired anyway.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Tuple

import jwt
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from gridpilot.central import keys as keymod
from gridpilot.central import schema, scopes
from gridpilot.central.keys import KeyFileError, Keys
from gridpilot.central.problems import ApiError, bad_request, unauthenticated

ROLES = ("user", "agent", "job", "ce", "admin", "tower")
#: Roles an admin may mint through the API; job tokens come only from a match.
MINTABLE_ROLES = ("user", "agent", "ce", "admin", "tower")
#: Roles bound to one site and one CE (a tower serving three sites holds three tokens).
BOUND_ROLES = ("agent", "ce", "tower")

DAY = 86400.0
DEFAULT_TTL_S: Dict[str, float] = {"user": 7 * DAY, "agent": 2 * DAY, "ce": 30 * DAY, "admin": 365 * DAY,
                                   "tower": 30 * DAY}
MAX_TTL_S = 400 * DAY
#: A job token outlives its job's TTL by this much: staging out and reporting happen after the payload ends.
JOB_TOKEN_MARGIN_S = DAY
#: Clock skew tolerated between the machine that minted a token and the one checking it, for nbf and iat. Not for
#: exp: a token's holder plans around its exp (the runner drains before it), so it ends when it says.
LEEWAY_S = 30.0
#: The version of the WLCG token profile the claims follow.
WLCG_VERSION = "1.0"
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "scope"]
_REQUIRED_LEGACY = ["exp", "iat", "sub", "jti"]


@dataclass(frozen=True)
class Claims:
    role: str
    subject: str
    jti: str
    issued: float
    expires: float
    site: Optional[str] = None
    ce: Optional[str] = None
    job_id: Optional[int] = None
    resubmission: Optional[int] = None
    scopes: FrozenSet[str] = frozenset()
    #: The key it was signed with, and the issuer it was checked against (a cached check holds while both do).
    kid: str = ""
    issuer: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"role": self.role, "subject": self.subject, "jti": self.jti,
                             "issued": self.issued, "expires": self.expires, "scope": scopes.to_claim(self.scopes),
                             "kid": self.kid, "issuer": self.issuer}
        for k in ("site", "ce", "job_id", "resubmission"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


def mint(
    keys: Keys,
    role: str,
    subject: str,
    *,
    site: Optional[str] = None,
    ce: Optional[str] = None,
    job_id: Optional[int] = None,
    resubmission: Optional[int] = None,
    ttl_s: Optional[float] = None,
    now: Optional[float] = None,
    scope: Optional[str] = None,
) -> Tuple[str, Claims]:
    """A signed token and its claims. Checks that the bindings the role needs are there and that `scope` (default:
    the role's) is the role's to give (ValueError if not); KeyFileError when this process cannot sign.

    A token signed with a key that retires lives no longer than the key: its exp says when it is refused."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not subject or not isinstance(subject, str) or len(subject) > 255:
        raise ValueError("subject must be a non-empty string of at most 255 characters")
    if role in BOUND_ROLES and not (site and ce):
        raise ValueError(f"a {role} token is bound to a site and a CE: give both")
    if role == "job" and (job_id is None or resubmission is None):
        raise ValueError("a job token is bound to a job id and its resubmission counter")
    if ttl_s is None:
        ttl_s = DEFAULT_TTL_S.get(role, DAY)
    if not (0 < ttl_s <= MAX_TTL_S):
        raise ValueError(f"ttl_s must be more than 0 and at most {int(MAX_TTL_S)} seconds")
    granted = scopes.requested(role, scope)
    signing = keys.signing_key()
    issuer = keys.issuer
    t = time.time() if now is None else now
    # JWT times are whole seconds: round the expiry up so a token never lives shorter than asked.
    iat, exp = int(t), int(math.ceil(t + ttl_s))
    if signing.retire_at is not None:
        exp = min(exp, int(signing.retire_at))
        if exp <= iat:
            raise KeyFileError(f"the signing key {signing.kid} retires now; copy the current key file here")
    claims = Claims(role, subject, uuid.uuid4().hex, float(iat), float(exp), site, ce, job_id, resubmission,
                    granted, signing.kid, issuer)
    payload: Dict[str, Any] = {
        "iss": issuer, "aud": issuer, "sub": subject, "iat": iat, "nbf": iat, "exp": exp, "jti": claims.jti,
        "scope": scopes.to_claim(granted), "wlcg.ver": WLCG_VERSION, "role": role,
    }
    for name, value in (("site", site), ("ce", ce), ("job", job_id), ("resub", resubmission)):
        if value is not None:
            payload[name] = value
    token = jwt.encode(payload, signing.key, algorithm=keymod.ALGORITHM, headers={"kid": signing.kid, "typ": "JWT"})
    return token, claims


def _invalid(why: str) -> ApiError:
    return unauthenticated(f"invalid token: {why}", "invalid_token")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def decode(keys: Keys, token: str, *, verify_exp: bool = True, conn: Optional[Connection] = None) -> Claims:
    """The claims of a token central signed and accepts now. ApiError 401 saying why otherwise: token_expired, or
    invalid_token (not a JWT, an algorithm or key central does not accept, a retired key, a bad signature, another
    issuer or audience, not yet valid, a claim missing or malformed). `verify_exp` False: an expired token too."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise _invalid(str(e)) from None
    alg, kid = header.get("alg"), header.get("kid")
    if kid is None and alg == keymod.LEGACY_ALGORITHM:
        kid = keymod.LEGACY_KID
    if not isinstance(kid, str) or not kid or len(kid) > keymod.MAX_KID:
        raise _invalid(f"the header names no signing key (kid) central could have (alg {_short(alg)})")
    key = keys.lookup(kid, conn)
    if key is None:
        if kid == keymod.LEGACY_KID:
            raise _invalid("an HS256 token from before the upgrade to signing keys, no longer accepted; get a new "
                           "token")
        raise _invalid(f"signed with key {_short(kid)}, which is not in central's key set")
    now = time.time()
    if not key.accepted(now):
        raise _invalid(f"signed with key {kid}, retired at {keymod.utc(key.retire_at or 0)}")
    if alg != key.alg:
        # alg=none, or HS256 with a public key as the secret: the key decides the algorithm, not the token.
        raise _invalid(f"the header says alg {_short(alg)} but key {kid} is {key.alg}")
    legacy = kid == keymod.LEGACY_KID
    try:
        p = jwt.decode(
            token, key.key, algorithms=[key.alg], leeway=LEEWAY_S,
            options={"require": _REQUIRED_LEGACY if legacy else _REQUIRED, "verify_exp": False,
                     "verify_aud": False, "verify_iss": False},
        )
    except jwt.InvalidSignatureError:
        raise _invalid(f"the signature does not verify with key {kid}") from None
    except jwt.ImmatureSignatureError as e:
        raise _invalid(f"not valid yet ({e})") from None
    except jwt.PyJWTError as e:
        raise _invalid(str(e)) from None
    exp = p["exp"]
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise _invalid("the exp claim must be a number")
    if verify_exp and exp <= time.time():
        raise unauthenticated("token expired", "token_expired")
    issuer = keymod.DEFAULT_ISSUER if legacy else keys.key_set(conn).issuer
    if p.get("iss") != issuer:
        raise _invalid(f"issued by {_short(p.get('iss'))}, not by this central ({issuer!r})")
    aud = p.get("aud")
    if not legacy and aud != issuer and not (isinstance(aud, list) and issuer in aud):
        raise _invalid(f"meant for audience {_short(aud)}, not this central ({issuer!r})")
    role = p.get("role")
    if role not in ROLES:
        raise _invalid(f"unknown role {_short(role)}")
    granted = scopes.ROLE_SCOPES[role] if legacy else scopes.granted(role, p.get("scope"))
    if granted is None:
        raise _invalid("the scope claim must be a string of space-separated scopes")
    job, resub = p.get("job"), p.get("resub")
    if role == "job" and not (isinstance(job, int) and isinstance(resub, int)):
        raise _invalid("a job token without its job binding")
    return Claims(
        role=role, subject=str(p["sub"]), jti=str(p["jti"]), issued=float(p["iat"]), expires=float(p["exp"]),
        site=p.get("site"), ce=p.get("ce"), job_id=job, resubmission=resub, scopes=granted, kid=kid,
        issuer=issuer,
    )


class Verifier:
    """Tokens whose signature was already checked, with their claims: a pilot sends the same token with every
    request, and an Ed25519 check costs more than the rest of the authentication. On each use the cached claims are
    held against the expiry, the key's retirement and the issuer again; revocation is looked up in the database on
    each use (auth.authenticate), never cached."""

    def __init__(self, keys: Keys, size: int = 10_000) -> None:
        self.keys = keys
        self.size = size
        self._claims: OrderedDict[str, Claims] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, conn: Optional[Connection] = None) -> Claims:
        with self._lock:
            claims = self._claims.get(token)
            if claims is not None:
                self._claims.move_to_end(token)
        if claims is not None:
            now = time.time()
            if claims.expires <= now:
                raise unauthenticated("token expired", "token_expired")
            key = self.keys.lookup(claims.kid, conn)
            if key is not None and key.accepted(now) and claims.issuer == self.keys.key_set(conn).issuer:
                return claims
            with self._lock:
                self._claims.pop(token, None)
        claims = decode(self.keys, token, conn=conn)  # raises why it is no longer accepted
        with self._lock:
            self._claims[token] = claims
            if len(self._claims) > self.size:
                self._claims.popitem(last=False)
        return claims


def is_revoked(conn: Connection, jti: str) -> bool:
    return conn.execute(
        select(schema.revoked_tokens.c.jti).where(schema.revoked_tokens.c.jti == jti)
    ).first() is not None


def revoke(conn: Connection, jti: str, expires: float, reason: str) -> bool:
    """List the token as revoked until `expires`. False when it already was."""
    if is_revoked(conn, jti):
        return False
    conn.execute(schema.revoked_tokens.insert().values(jti=jti, expires=expires, reason=reason[:255]))
    return True


def purge_revoked(conn: Connection, now: float) -> int:
    """Forget revocations of tokens that have expired anyway (their expiry check fails first)."""
    res = conn.execute(delete(schema.revoked_tokens).where(schema.revoked_tokens.c.expires < now))
    return int(res.rowcount or 0)


def mint_request(keys: Keys, body: Dict[str, Any], now: float) -> Tuple[str, Claims]:
    """Mint from an API request body {"role", "subject", "site"?, "ce"?, "ttl_s"?, "scope"?}: ApiError 400 on bad
    input."""
    role = body.get("role")
    if role not in MINTABLE_ROLES:
        raise bad_request(f"role must be one of {', '.join(MINTABLE_ROLES)} (job tokens come from a match)")
    ttl = body.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
        raise bad_request("ttl_s must be a number of seconds")
    for k in ("subject", "site", "ce"):
        v = body.get(k)
        if v is not None and not isinstance(v, str):
            raise bad_request(f"{k} must be a string")
    scope = body.get("scope")
    if scope is not None and (not isinstance(scope, str) or len(scope) > scopes.MAX_SCOPE_CLAIM):
        raise bad_request(f"scope must be a string of space-separated scopes, at most {scopes.MAX_SCOPE_CLAIM} "
                          f"characters")
    try:
        return mint(keys, role, body.get("subject") or "", site=body.get("site"), ce=body.get("ce"),
                    ttl_s=None if ttl is None else float(ttl), now=now, scope=scope)
    except ValueError as e:
        raise bad_request(str(e)) from None


__all__ = [
    "ApiError", "BOUND_ROLES", "Claims", "DEFAULT_TTL_S", "LEEWAY_S", "MINTABLE_ROLES", "ROLES", "Verifier", "decode", "is_revoked",
    "mint", "mint_request", "purge_revoked", "revoke",
]
