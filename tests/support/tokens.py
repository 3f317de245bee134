"""Tokens as an attacker, a stale copy or another site would make them: signed with keys central does not hold or
no longer accepts, with the claims of another issuer or audience, tampered with, or with the algorithm swapped.

Built by hand (base64url JSON and a signature), not through central's tokens.mint, so nothing of central's own
checks shapes them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any, Dict, Optional

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridpilot.central import keys as keymod
from gridpilot.central import scopes


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload(issuer: str, role: str = "admin", subject: str = "mallory", ttl_s: float = 600,
            **over: Any) -> Dict[str, Any]:
    """The claims central would put in a token of that role."""
    now = int(time.time())
    p: Dict[str, Any] = {"iss": issuer, "aud": issuer, "sub": subject, "iat": now, "nbf": now,
                         "exp": now + int(ttl_s), "jti": uuid.uuid4().hex, "role": role, "wlcg.ver": "1.0",
                         "scope": scopes.to_claim(scopes.ROLE_SCOPES.get(role, ()))}
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def _join(header: Dict[str, Any], claims: Dict[str, Any]) -> bytes:
    return (b64(orjson.dumps(header)) + "." + b64(orjson.dumps(claims))).encode()


def ed25519(claims: Dict[str, Any], key: Ed25519PrivateKey, kid: Optional[str] = None,
            alg: str = "EdDSA") -> str:
    """Signed with `key`, its header naming `kid` (default: the key's own thumbprint)."""
    kid = keymod.thumbprint(key.public_key()) if kid is None else kid
    head = _join({"alg": alg, "typ": "JWT", "kid": kid}, claims)
    return head.decode() + "." + b64(key.sign(head))


def hs256(claims: Dict[str, Any], secret: bytes, kid: Optional[str] = None) -> str:
    """HMAC-SHA256 with `secret` (any bytes: PyJWT would refuse a public key as the secret, an attacker would not)."""
    header: Dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    head = _join(header, claims)
    return head.decode() + "." + b64(hmac.new(secret, head, hashlib.sha256).digest())


def unsigned(claims: Dict[str, Any], kid: Optional[str]) -> str:
    """alg none, no signature."""
    header: Dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _join(header, claims).decode() + "."


def tampered(token: str, **changes: Any) -> str:
    """The token with its claims changed and its signature kept."""
    head, body, sig = token.split(".")
    claims = orjson.loads(unb64(body))
    claims.update(changes)
    return ".".join((head, b64(orjson.dumps(claims)), sig))


def zero_signature(token: str) -> str:
    """The token with a signature of the right length, all zeros."""
    head, body, _ = token.split(".")
    return ".".join((head, body, b64(bytes(64))))
