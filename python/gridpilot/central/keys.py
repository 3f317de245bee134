"""Token signing keys: each private key a 0600 file, the public keys in the database, published as a JWKS.

With one HS256 secret in the database, every process (and every reader of the database or a backup of it) that
could check a token could also make one. Tokens are signed with an Ed25519 key instead (JWS alg EdDSA): its private
half is a file that only the processes which sign read (`signing.key` in central's state directory unless the
settings name another); its public half is a row of `signing_keys`, which every central process on the database
reads and /.well-known/jwks.json publishes. A process that only verifies needs no file at all.

A key is named by its RFC 7638 thumbprint (`kid`), which each token carries in its header: the verifier picks the
key by kid and the algorithm by the key, never by what the token says (so `alg: none` and HS256 signed with a public
key get nowhere). Rotation (`rotate`) lists a new key, gives every older one a retirement time and replaces the file:
processes signing with that file use the new key from their next token on (they notice the file changed), and every
process accepts an old key's tokens until its retirement, then refuses them.

A database from before schema step 6 also holds its HS256 secret: step 6 lists it as LEGACY_KID, retiring
LEGACY_GRACE_S after the upgrade, so the tokens already handed out (pilots', jobs' in flight, CEs', users') keep
working for that long; a new token is never HS256. `gridpilot central keys retire hs256-legacy` ends it sooner. Once
retired, the sweeper deletes the secret.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError
from gridpilot.private_files import keep_private, write_private

log = logging.getLogger("gridpilot.central")

ALGORITHM = "EdDSA"
#: The HS256 secret of a database made before step 6, as an entry of the key set (never published).
LEGACY_KID = "hs256-legacy"
LEGACY_ALGORITHM = "HS256"
LEGACY_SECRET_SETTING = "jwt_key"
#: How long after step 6 the old HS256 tokens stay valid: the life of a pilot's agent token (client.py's
#: PILOT_TOKEN_MAX_TTL_S), so pilots in flight run out; longer-lived CE and user tokens are minted again meanwhile.
LEGACY_GRACE_S = 2 * 86400.0
#: Tokens before step 6 said this issuer (and no audience); it stays the default.
DEFAULT_ISSUER = "gridpilot"
ISSUER_SETTING = "token_issuer"
#: Each process reads the key set again this often, so a retirement set on another machine (`keys retire`) is
#: obeyed here within this many seconds; a retirement time already known is obeyed to the second.
REFRESH_S = 10.0
#: What may be in a kid before it is looked up (a thumbprint is 43 characters).
MAX_KID = 64


class KeyFileError(ApiError):
    """The signing key file is missing or unusable, or holds a key central does not (or no longer) accept. The
    message names the file and what to do; in the API it is a 503 (this process cannot sign), in the CLI one line."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "cannot_sign", message)


# -- key files --


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public: Ed25519PublicKey) -> Dict[str, str]:
    """The key's JWK members (RFC 8037): what its thumbprint is taken of."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}


def thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace; base64url."""
    return _b64(hashlib.sha256(orjson.dumps(public_jwk(public), option=orjson.OPT_SORT_KEYS)).digest())


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key_file(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path` (PEM, PKCS#8, unencrypted), narrowed to 0600 first when it is ours and
    wider. KeyFileError naming the file otherwise."""
    try:
        keep_private(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as e:
        raise KeyFileError(f"cannot read the signing key file {path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {first}") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey").lstrip("_") or "other"
        raise KeyFileError(f"{path} holds a private key of type {kind}, not an Ed25519 key")
    return key


def _missing(path: Path) -> KeyFileError:
    return KeyFileError(f"no signing key file {path}: `gridpilot central init` makes one (or copy the key file of the "
                        f"host that has it; a process that only verifies tokens needs none)")


def write_new_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the key to `path`, 0600 (its directory made 0700 when missing); FileExistsError when there is one
    already, so two `init`s racing make one key, not two."""
    write_private(path, private_pem(key), exclusive=True)


# -- the key set in the database --


@dataclass(frozen=True)
class PublicKey:
    kid: str
    alg: str
    created: float
    retire_at: Optional[float]
    #: The verification key: an Ed25519PublicKey, or the HS256 secret for LEGACY_KID.
    key: Any
    jwk: Dict[str, str]

    def accepted(self, now: float) -> bool:
        return self.retire_at is None or now < self.retire_at

    def describe(self) -> Dict[str, Any]:
        return {"kid": self.kid, "alg": self.alg, "created": self.created, "retire_at": self.retire_at}


@dataclass(frozen=True)
class KeySet:
    keys: Dict[str, PublicKey]
    issuer: str

    def accepted(self, now: float) -> List[PublicKey]:
        return [k for k in self.keys.values() if k.accepted(now)]

    def jwks(self, now: float) -> Dict[str, Any]:
        """The JWK Set (RFC 7517) of the public keys central accepts now, newest first."""
        keys = sorted((k for k in self.accepted(now) if k.alg == ALGORITHM), key=lambda k: -k.created)
        return {"keys": [{**k.jwk, "kid": k.kid, "alg": k.alg, "use": "sig"} for k in keys]}


def read_issuer(conn: Connection) -> str:
    value = conn.execute(select(schema.settings.c.value).where(schema.settings.c.key == ISSUER_SETTING)).scalar()
    return str(value) if value else DEFAULT_ISSUER


def set_issuer(conn: Connection, issuer: str) -> Optional[str]:
    """Store the issuer every process puts in (and expects of) tokens. Returns the previous one when it changed."""
    s = schema.settings
    old = conn.execute(select(s.c.value).where(s.c.key == ISSUER_SETTING)).scalar()
    if old == issuer:
        return None
    if old is None:
        conn.execute(s.insert().values(key=ISSUER_SETTING, value=issuer))
    else:
        conn.execute(update(s).where(s.c.key == ISSUER_SETTING).values(value=issuer))
    return str(old) if old is not None else DEFAULT_ISSUER


def read_key_set(conn: Connection) -> KeySet:
    """The key set as the database has it now: two queries."""
    s, t = schema.settings, schema.signing_keys
    values = dict(conn.execute(select(s.c.key, s.c.value).where(
        s.c.key.in_((ISSUER_SETTING, LEGACY_SECRET_SETTING)))).all())
    keys: Dict[str, PublicKey] = {}
    for row in conn.execute(select(t)).all():
        if row.alg == ALGORITHM:
            jwk = orjson.loads(row.jwk)
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            key: Any = Ed25519PublicKey.from_public_bytes(raw)
        elif row.kid == LEGACY_KID and row.alg == LEGACY_ALGORITHM and values.get(LEGACY_SECRET_SETTING):
            jwk, key = {}, values[LEGACY_SECRET_SETTING]
        else:  # written by a newer gridpilot (not ours to verify with), or the legacy entry without its secret
            continue
        keys[row.kid] = PublicKey(row.kid, row.alg, row.created, row.retire_at, key, jwk)
    return KeySet(keys, values.get(ISSUER_SETTING) or DEFAULT_ISSUER)


def add_key(conn: Connection, key: Ed25519PrivateKey, now: float) -> Tuple[str, bool]:
    """List the key's public half (a no-op when it is listed). Returns its kid and whether it was added now.
    KeyFileError when the key is listed and retired: a retired key is never brought back."""
    public = key.public_key()
    kid = thumbprint(public)
    t = schema.signing_keys
    row = conn.execute(select(t.c.retire_at).where(t.c.kid == kid)).first()
    if row is not None:
        if row.retire_at is not None and row.retire_at <= now:
            raise KeyFileError(f"the signing key {kid} was retired at {utc(row.retire_at)}; "
                               f"`gridpilot central keys rotate` makes a new one")
        return kid, False
    conn.execute(t.insert().values(kid=kid, alg=ALGORITHM, jwk=orjson.dumps(public_jwk(public)).decode(),
                                   created=now, retire_at=None))
    return kid, True


def retire(conn: Connection, kid: str, at: float) -> Optional[PublicKey]:
    """Retire a key at `at` (sooner or later than it was to retire). The key as it was; None when unknown."""
    before = read_key_set(conn).keys.get(kid)
    if before is None:
        return None
    conn.execute(update(schema.signing_keys).where(schema.signing_keys.c.kid == kid).values(retire_at=at))
    return before


def purge_retired(conn: Connection, now: float) -> int:
    """Forget keys past their retirement (their tokens are refused either way), and the legacy HS256 secret with its
    entry: after this, nothing in the database can sign a token central accepts."""
    t = schema.signing_keys
    gone = conn.execute(select(t.c.kid).where(t.c.retire_at <= now)).scalars().all()
    if not gone:
        return 0
    conn.execute(delete(t).where(t.c.kid.in_(gone)))
    if LEGACY_KID in gone:
        conn.execute(delete(schema.settings).where(schema.settings.c.key == LEGACY_SECRET_SETTING))
    return len(gone)


def utc(t: float) -> str:
    """A time as people read it in a message."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# -- what `central init` and `central keys` do --


def ensure_signing_key(db: Database, path: Path, now: float) -> Tuple[str, bool]:
    """The key file at `path` (made when missing) and its public key listed in the database. Returns its kid and
    whether the file was made now. Safe to run again and from two processes at once."""
    made = False
    try:
        key = Ed25519PrivateKey.generate()
        write_new_key_file(path, key)
        made = True
    except FileExistsError:
        pass
    except OSError as e:
        raise KeyFileError(f"cannot write the signing key file {path}: {e.strerror or e}") from None
    key = load_key_file(path)
    try:
        with db.write() as conn:
            kid, _ = add_key(conn, key, now)
    except IntegrityError:  # another process listed the same key between our look and our insert
        kid = thumbprint(key.public_key())
    return kid, made


@dataclass(frozen=True)
class Rotation:
    kid: str
    retiring: List[PublicKey]
    retire_at: float


def rotate(db: Database, path: Path, retire_after_s: float, now: float) -> Rotation:
    """A new key in `path` that signs from now on; every other key still accepted retires at now + retire_after_s
    (or keeps an earlier retirement it already had).

    The new key is written next to `path` first, then listed (and the others retired) in one transaction, then
    renamed over `path`: no process ever signs with a key the others do not know, and a failure before the rename
    leaves the old file signing (a failed transaction changes nothing; a listed key nobody signs with is harmless:
    run the rotation again)."""
    if retire_after_s < 0:
        raise ValueError("the retirement delay must be 0 or more seconds")
    key = Ed25519PrivateKey.generate()
    staged = path.with_name(f".{path.name}.new")
    try:
        write_private(staged, private_pem(key))
    except OSError as e:
        raise KeyFileError(f"cannot write the new signing key next to {path}: {e.strerror or e}") from None
    at = now + retire_after_s
    retiring: List[PublicKey] = []
    try:
        with db.write() as conn:
            for old in read_key_set(conn).accepted(now):
                if old.alg == ALGORITHM and (old.retire_at is None or old.retire_at > at):
                    retire(conn, old.kid, at)
                    retiring.append(old)
            kid, _ = add_key(conn, key, now)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, path)
    return Rotation(kid, retiring, at)


# -- one process's view --


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: Ed25519PrivateKey
    #: When central stops accepting this key's tokens; a token it signs never claims to live longer.
    retire_at: Optional[float]


class Keys:
    """One process's keys: the key set of the database (read again every REFRESH_S, and when a token names a key it
    does not know), and the private key of `key_file` when this process signs (read again when the file changes,
    so a rotation reaches it without a restart). Thread-safe."""

    def __init__(self, db: Database, key_file: Optional[Path]) -> None:
        self.db = db
        self.key_file = key_file
        self._lock = threading.Lock()
        self._set: Optional[KeySet] = None
        self._read = -1e18
        self._file_id: Optional[Tuple[int, int, int, int]] = None
        self._private: Optional[Ed25519PrivateKey] = None
        self._kid = ""

    def refresh(self, conn: Optional[Connection] = None) -> KeySet:
        """Read the key set from the database now (on `conn` when given)."""
        if conn is not None:
            ks = read_key_set(conn)
        else:
            with self.db.read() as c:
                ks = read_key_set(c)
        with self._lock:
            self._set, self._read = ks, time.monotonic()
        return ks

    def key_set(self, conn: Optional[Connection] = None) -> KeySet:
        ks = self._set
        if ks is None or time.monotonic() - self._read > REFRESH_S:
            return self.refresh(conn)
        return ks

    def lookup(self, kid: str, conn: Optional[Connection] = None) -> Optional[PublicKey]:
        """The key of that kid, reading the key set again when it is not known here: another process may have
        listed it a moment ago (a rotation lists the key before anything signs with it, so a read now finds it).

        Not rate-limited: a limit would refuse a new key's first tokens for a while after a rotation, and a token
        with a made-up kid costs two small queries, what GET /health costs anyone."""
        found = self.key_set(conn).keys.get(kid)
        if found is None:
            found = self.refresh(conn).keys.get(kid)
        return found

    @property
    def issuer(self) -> str:
        return self.key_set().issuer

    def signing_key(self) -> SigningKey:
        """This process's private key and its kid; KeyFileError when there is no file, or its key is not one
        central accepts now."""
        if self.key_file is None:
            raise KeyFileError("this central process only verifies tokens (no signing key file); mint them where "
                               "the signing key is")
        private, kid = self._load()
        key = self.lookup(kid)  # a key file just rotated is listed already, maybe after this process last looked
        now = time.time()
        if key is None:
            raise KeyFileError(f"the signing key {kid} in {self.key_file} is not in central's key set: "
                               f"`gridpilot central init` lists it, or copy the current key file here")
        if not key.accepted(now):
            raise KeyFileError(f"the signing key {kid} in {self.key_file} retired at {utc(key.retire_at or 0)}: "
                               f"copy the current key file here (`gridpilot central keys list` names it)")
        return SigningKey(kid, private, key.retire_at)

    def _load(self) -> Tuple[Ed25519PrivateKey, str]:
        assert self.key_file is not None
        try:
            st = os.stat(self.key_file)
        except FileNotFoundError:
            raise _missing(self.key_file) from None
        except OSError as e:
            raise KeyFileError(f"cannot read the signing key file {self.key_file}: {e.strerror or e}") from None
        file_id = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if file_id == self._file_id and self._private is not None:
                return self._private, self._kid
        private = load_key_file(self.key_file)
        kid = thumbprint(private.public_key())
        with self._lock:
            changed = self._kid and kid != self._kid
            self._private, self._kid, self._file_id = private, kid, file_id
        if changed:
            log.info("signing with key %s from %s from now on", kid, self.key_file)
        return private, kid

    def jwks(self) -> Dict[str, Any]:
        return self.key_set().jwks(time.time())


__all__ = ["ALGORITHM", "DEFAULT_ISSUER", "KeyFileError", "KeySet", "Keys", "LEGACY_GRACE_S",
           "LEGACY_KID", "PublicKey", "Rotation", "SigningKey", "add_key", "ensure_signing_key", "load_key_file",
           "purge_retired", "read_issuer", "read_key_set", "retire", "rotate", "set_issuer", "thumbprint"]
