"""JWT tokens: minting, checking, revocation.

Every token is HS256-signed with one key kept in the database's `settings` table, so every central process on
that database accepts every other's tokens and nothing lives in a process between requests.

Claims: `sub` (who), `role` (user, agent, job, ce, admin), `jti` (this token, for revocation), `iat`, `exp`,
and the bindings: `site` and `ce` for agent and ce tokens; `job` and `resub` (the job's resubmission counter)
for job tokens. A revoked token is listed in `revoked_tokens` until it would have expired anyway.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import jwt
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from gridpilot.central import schema
from gridpilot.central.problems import ApiError, bad_request, unauthenticated

ROLES = ("user", "agent", "job", "ce", "admin")
#: Roles an admin may mint through the API; job tokens come only from a match.
MINTABLE_ROLES = ("user", "agent", "ce", "admin")

DAY = 86400.0
DEFAULT_TTL_S: Dict[str, float] = {"user": 7 * DAY, "agent": 2 * DAY, "ce": 30 * DAY, "admin": 365 * DAY}
MAX_TTL_S = 400 * DAY
#: A job token outlives its job's TTL by this much: staging out and reporting happen after the payload ends.
JOB_TOKEN_MARGIN_S = DAY

ALGORITHM = "HS256"
ISSUER = "gridpilot"
KEY_SETTING = "jwt_key"


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

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"role": self.role, "subject": self.subject, "jti": self.jti,
                             "issued": self.issued, "expires": self.expires}
        for k in ("site", "ce", "job_id", "resubmission"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


def new_key() -> str:
    return secrets.token_urlsafe(48)


def ensure_key(conn: Connection) -> str:
    """The signing key, made and stored on first use."""
    key = load_key(conn)
    if key is None:
        key = new_key()
        conn.execute(schema.settings.insert().values(key=KEY_SETTING, value=key))
    return key


def load_key(conn: Connection) -> Optional[str]:
    return conn.execute(select(schema.settings.c.value).where(schema.settings.c.key == KEY_SETTING)).scalar()


def mint(
    key: str,
    role: str,
    subject: str,
    *,
    site: Optional[str] = None,
    ce: Optional[str] = None,
    job_id: Optional[int] = None,
    resubmission: Optional[int] = None,
    ttl_s: Optional[float] = None,
    now: Optional[float] = None,
) -> Tuple[str, Claims]:
    """A signed token and its claims. Checks that the bindings the role needs are there (ValueError if not)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not subject or not isinstance(subject, str) or len(subject) > 255:
        raise ValueError("subject must be a non-empty string of at most 255 characters")
    if role in ("agent", "ce") and not (site and ce):
        raise ValueError(f"a {role} token is bound to a site and a CE: give both")
    if role == "job" and (job_id is None or resubmission is None):
        raise ValueError("a job token is bound to a job id and its resubmission counter")
    if ttl_s is None:
        ttl_s = DEFAULT_TTL_S.get(role, DAY)
    if not (0 < ttl_s <= MAX_TTL_S):
        raise ValueError(f"ttl_s must be more than 0 and at most {int(MAX_TTL_S)} seconds")
    t = time.time() if now is None else now
    # JWT times are whole seconds: round the expiry up so a token never lives shorter than asked.
    iat, exp = int(t), int(math.ceil(t + ttl_s))
    claims = Claims(role, subject, uuid.uuid4().hex, float(iat), float(exp), site, ce, job_id, resubmission)
    payload: Dict[str, Any] = {"iss": ISSUER, "sub": subject, "role": role, "jti": claims.jti, "iat": iat, "exp": exp}
    for name, value in (("site", site), ("ce", ce), ("job", job_id), ("resub", resubmission)):
        if value is not None:
            payload[name] = value
    return jwt.encode(payload, key, algorithm=ALGORITHM), claims


def decode(key: str, token: str, *, verify_exp: bool = True) -> Claims:
    """The claims of a token signed with `key`. ApiError 401 (token_expired / invalid_token) otherwise."""
    try:
        p = jwt.decode(
            token, key, algorithms=[ALGORITHM], issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "jti"], "verify_exp": verify_exp},
        )
    except jwt.ExpiredSignatureError:
        raise unauthenticated("token expired", "token_expired") from None
    except jwt.PyJWTError as e:
        raise unauthenticated(f"invalid token: {e}", "invalid_token") from None
    role = p.get("role")
    if role not in ROLES:
        raise unauthenticated(f"invalid token: unknown role {role!r}", "invalid_token")
    job, resub = p.get("job"), p.get("resub")
    if role == "job" and not (isinstance(job, int) and isinstance(resub, int)):
        raise unauthenticated("invalid token: a job token without its job binding", "invalid_token")
    return Claims(
        role=role, subject=str(p["sub"]), jti=str(p["jti"]), issued=float(p["iat"]), expires=float(p["exp"]),
        site=p.get("site"), ce=p.get("ce"), job_id=job, resubmission=resub,
    )


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
    """Forget revocations of tokens that have expired anyway (their signature check fails first)."""
    res = conn.execute(delete(schema.revoked_tokens).where(schema.revoked_tokens.c.expires < now))
    return int(res.rowcount or 0)


def mint_request(key: str, body: Dict[str, Any], now: float) -> Tuple[str, Claims]:
    """Mint from an API request body {"role", "subject", "site"?, "ce"?, "ttl_s"?}: ApiError 400 on bad input."""
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
    try:
        return mint(key, role, body.get("subject") or "", site=body.get("site"), ce=body.get("ce"),
                    ttl_s=None if ttl is None else float(ttl), now=now)
    except ValueError as e:
        raise bad_request(str(e)) from None


__all__ = [
    "ApiError", "Claims", "DEFAULT_TTL_S", "MINTABLE_ROLES", "ROLES", "decode", "ensure_key", "is_revoked",
    "load_key", "mint", "mint_request", "new_key", "purge_revoked", "revoke",
]
