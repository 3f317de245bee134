"""Starting central: `init` (database, signing key, default storage, admin token), `serve` (uvicorn in the
foreground, one process or several: workers.py), `mint_local` (`central token`), and EmbeddedCentral (uvicorn in a
background thread, for the demo and the tests).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, List, Optional, Sequence, Type, Union

import uvicorn

from gridpilot.central import catalogue, keys, migrations, tokens
from gridpilot.central.app import Central, create_app
from gridpilot.central.db import Database, redact
from gridpilot.central.migrations import open_database
from gridpilot.central.settings import ADMIN_TOKEN_FILE, CentralSettings
from gridpilot.central.workers import check_workers, run_supervisor, with_worker_header
from gridpilot.endpoints import DEFAULT_PORT, URL_FILE
from gridpilot.private_files import make_private_dir, write_private
from gridpilot.tls import check_server_files

log = logging.getLogger("gridpilot.central")

#: The storage element `init` configures when there is none: a directory in the state directory.
DEFAULT_SE_NAME = catalogue.INIT_SE_NAME


@dataclass(frozen=True)
class InitResult:
    admin_token: str
    token_file: Optional[Path]
    db_url: str
    applied: List[int]
    storage_elements: List[str]
    #: The signing key file, its kid, and whether init made it now.
    key_file: Path
    kid: str
    key_made: bool
    #: The issuer tokens had before `issuer` changed it (None: unchanged).
    old_issuer: Optional[str] = None


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, replacing it atomically (never briefly readable by others,
    whatever the umask; a missing directory for it is made 0700)."""
    write_private(path, text)


def init(
    settings: CentralSettings,
    *,
    storage: Sequence[dict] = (),
    write_token: bool = True,
    subject: str = "admin",
    issuer: Optional[str] = None,
) -> InitResult:
    """Create or upgrade the database, make the signing key file and list its public key, set the token issuer
    (when given), configure storage, mint an admin token.

    Safe to run again: the key file and existing storage elements are kept; each run mints a new admin token. On a
    database made before signing keys (schema step 6) it makes the key file; the old HS256 tokens stay valid for
    keys.LEGACY_GRACE_S. The state directory is made (or narrowed to) 0700 and the key file, the SQLite database and
    admin.token 0600. A bad storage element (ApiError) is refused before anything is written; a key file that is
    not a usable key (KeyFileError) before the admin token is minted.
    """
    ses = [catalogue.check_storage_element(s) for s in storage]
    if issuer is not None and not _issuer_ok(issuer):
        raise ValueError(f"the issuer must be central's URL (https://host:port) or a name, 1-255 printable "
                         f"characters without spaces; got {issuer!r}")
    make_private_dir(settings.state_dir)
    db = Database(settings.db_url)
    try:
        applied = migrations.upgrade(db)
        old_issuer = None
        with db.write() as conn:
            if issuer is not None:
                old_issuer = keys.set_issuer(conn, issuer)
            for se in ses:
                catalogue.put_storage_element(conn, se)
        kid, made = keys.ensure_signing_key(db, settings.signing_key_path, time.time())
        if not ses and not catalogue.storage_elements(db):
            se_dir = settings.state_dir / "se"
            se_dir.mkdir(parents=True, exist_ok=True)
            with db.write() as conn:
                catalogue.put_storage_element(conn, {"name": DEFAULT_SE_NAME, "url": se_dir.resolve().as_uri(),
                                                     "kind": "disk"})
        names = [s["name"] for s in catalogue.storage_elements(db)]
        token, _ = tokens.mint(keys.Keys(db, settings.signing_key_path), "admin", subject)
    finally:
        db.dispose()
    path = None
    if write_token:
        path = settings.state_dir / ADMIN_TOKEN_FILE
        write_secret(path, token + "\n")
    return InitResult(token, path, settings.db_url, applied, names, settings.signing_key_path, kid, made, old_issuer)


def _issuer_ok(issuer: str) -> bool:
    return 0 < len(issuer) <= 255 and issuer.isprintable() and not any(c.isspace() for c in issuer)


def mint_local(settings: CentralSettings, role: str, subject: str, **kw: Any) -> str:
    """Mint a token with the signing key file directly (for operators on the central machine). KeyFileError when
    the file is missing or holds a key central does not accept; ValueError for a bad role, binding or lifetime."""
    db = open_database(settings.db_url, upgrade=False)
    try:
        token, _ = tokens.mint(keys.Keys(db, settings.signing_key_path), role, subject, **kw)
    finally:
        db.dispose()
    return token


def open_central(settings: CentralSettings, *, upgrade: bool = True) -> Central:
    """A Central on an upgraded database (what a serving process needs). `upgrade=False`: only check that the
    database is at this code's version (SchemaError otherwise), for workers whose parent upgraded it."""
    db = open_database(settings.db_url, upgrade=upgrade, background_checkpoints=True)
    try:
        return Central(settings, db)
    except BaseException:  # its signing key file, named in the error
        db.dispose()
        raise


def serve(settings: CentralSettings, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, log_level: str = "info",
          certfile: Optional[str] = None, keyfile: Optional[str] = None, workers: int = 1) -> int:
    """Serve in the foreground until SIGINT/SIGTERM, over https with `certfile` and `keyfile` (PEM). Writes the URL
    to the state directory for the user commands. ConfigError (naming the file) for an unusable certificate or key;
    ValueError naming --workers for a count out of 1-64.

    The state directory is made (or narrowed to) 0700 first: the SQLite database may be created in it.
    `workers` > 1: that many processes on the one port (central/workers.py); the schema is upgraded here, once,
    before any of them starts, and the checks a worker would make (signing key, settings) are made here too, so a
    bad configuration is said once, before the URL is printed.
    """
    workers = check_workers(workers)
    check_server_files(certfile, keyfile)  # first of all: nothing is touched for a server that could not start
    make_private_dir(settings.state_dir)
    sock = _bind(host, port)  # first: a port in use is said before the database is touched
    try:
        central = open_central(settings)
    except BaseException:
        sock.close()
        raise
    if workers > 1:
        central.close()  # the workers open their own: nothing of the parent's crosses into them
    actual = sock.getsockname()[1]
    url = f"{'https' if certfile else 'http'}://{_url_host(host)}:{actual}"
    try:
        (settings.state_dir / URL_FILE).write_text(url + "\n")
    except OSError as e:
        log.warning("cannot write %s: %s", settings.state_dir / URL_FILE, e)
    print(f"gridpilot central on {url} (database {redact(settings.db_url)})"
          + (f" with {workers} worker processes" if workers > 1 else ""), flush=True)
    options = dict(log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=10,
                   **_tls_options(certfile, keyfile))
    if workers > 1:
        try:
            return run_supervisor(options, settings, sock, workers)
        finally:
            sock.close()
    config = uvicorn.Config(with_worker_header(create_app(central)), **options)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found installed:
    # with Python's default one the process would die of it (143), so a clean stop would look like a failure.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _tls_options(certfile: Optional[str], keyfile: Optional[str]) -> dict:
    if not certfile:
        return {}
    # check_server_files loaded them first (refusing an encrypted key, which OpenSSL would prompt for on the terminal).
    return {"ssl_certfile": certfile, "ssl_keyfile": keyfile}


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off only on sockets whose proto is IPPROTO_TCP, and with Nagle on,
    # every answer on a kept-alive connection waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class EmbeddedCentral:
    """Central served by uvicorn in a background thread on 127.0.0.1, for the demo and the tests.

        with EmbeddedCentral(tmp_path) as central:
            client = CentralClient(central.url, central.admin_token)

    `db_url` defaults to the SQLite file in `state_dir`; `port` 0 picks a free port; `certfile` and `keyfile` serve
    https (`ca_file` is then what `client()` verifies it with). Keyword `settings` override CentralSettings fields
    (zombie_after_s, sweep_interval_s, max_body, ...).
    """

    def __init__(self, state_dir: Union[str, Path], *, db_url: Optional[str] = None, port: int = 0,
                 certfile: Optional[str] = None, keyfile: Optional[str] = None, ca_file: Optional[str] = None,
                 **settings: Any) -> None:
        self.settings = replace(CentralSettings.from_args(state_dir, db_url), **settings)
        check_server_files(certfile, keyfile)
        self.certfile, self.keyfile, self.ca_file = certfile, keyfile, ca_file
        self.port = port
        self.url = ""
        self.admin_token = ""
        self.central: Optional[Central] = None
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None

    @property
    def db(self) -> Database:
        assert self.central is not None, "not started"
        return self.central.db

    def start(self) -> EmbeddedCentral:
        if not self.settings.verify_only:  # a process that only verifies makes no key, so it mints no admin token
            self.admin_token = init(self.settings).admin_token
        self.central = open_central(self.settings)
        app = create_app(self.central)
        self._sock = _bind("127.0.0.1", self.port)
        self.port = self._sock.getsockname()[1]
        self.url = f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5, **_tls_options(self.certfile, self.keyfile))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="gridpilot-central", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("embedded central did not start (see the log above)")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None
        self.central = None

    def restart(self, down_s: float = 0.0) -> EmbeddedCentral:
        """Stop, stay down `down_s` seconds, and serve again on the same port from the same state directory (an
        outage as the pilot sees one: connections refused, then the same URL answers with the same database)."""
        self.stop()
        time.sleep(down_s)
        return self.start()

    def client(self, token: Optional[str] = None, **kw: Any) -> Any:
        """A CentralClient for this server (admin unless another token is given)."""
        from gridpilot.client import CentralClient

        kw.setdefault("ca_file", self.ca_file)
        return CentralClient(self.url, token or self.admin_token, **kw)

    def __enter__(self) -> EmbeddedCentral:
        return self.start()

    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()
