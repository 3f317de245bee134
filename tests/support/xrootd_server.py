"""Real XRootD servers for the storage tests (pytest plugin, loaded from conftest.py).

Each server is Debian's `xrootd` on 127.0.0.1 with a free port, serving /data from a fresh temporary directory,
computing adler32 itself (`xrootd.chksum adler32`). XRootD refuses to run as root: as root it is started with
`-R xrootd` and its directories belong to that user. It is stopped by the pid we started, never by name.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest
from support.require import require_or_skip

# Before anything imports XRootD (the client reads these once): a stopped server must fail a test in seconds,
# not after the client's default 120 s x 5 connection attempts.
os.environ.setdefault("XRD_CONNECTIONWINDOW", "3")
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_REQUESTTIMEOUT", "60")

SERVICE_USER = "xrootd"
EXPORT = "/data"
_READY_TIMEOUT_S = 15.0

_CONFIG = """\
xrd.port {port}
xrd.allow host localhost
all.role server
all.export {export}
oss.localroot {localroot}
all.adminpath {adminpath}
all.pidpath {adminpath}
xrootd.chksum adler32
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class XRootDServer:
    """One running xrootd. `url` is root://127.0.0.1:PORT; files of `se_url(name)` live below `disk_path()`."""

    def __init__(self, base: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.base = base
        self.port = port
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"root://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "adm" / "xrootd.log"

    def se_url(self, name: str) -> str:
        """The URL prefix of a storage element living in directory `name` of this server's export."""
        return f"{self.url}/{EXPORT}/{name}"

    def disk_path(self, pfn: str) -> Path:
        """Where the file of `pfn` lies on this machine's disk (to corrupt or inspect it behind the server's back)."""
        prefix = self.url + "/"
        assert pfn.startswith(prefix), pfn
        return self.base / "fs" / pfn[len(prefix) :].lstrip("/")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashed or unplugged storage element: no goodbye to connected clients."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(base: Path) -> XRootDServer:
    """Start xrootd serving a fresh directory `base` (created by the caller, emptied by it at the end)."""
    binary = shutil.which("xrootd")
    if binary is None:
        require_or_skip("no xrootd binary (Debian package xrootd-server)")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            user = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            require_or_skip(f"running as root but there is no user {SERVICE_USER!r} to run xrootd as")
    for sub in ("fs" + EXPORT, "adm"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if as_root:
        for path in (base, *base.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
    last_error = ""
    for _ in range(3):  # another process may take the free port between our probe and xrootd's bind
        port = _free_port()
        cfg = base / "adm" / "xrootd.cfg"
        cfg.write_text(_CONFIG.format(port=port, export=EXPORT, localroot=base / "fs", adminpath=base / "adm"))
        cmd = [binary, "-c", str(cfg), "-l", str(base / "adm" / "xrootd.log")]
        if as_root:
            cmd += ["-R", SERVICE_USER]  # xrootd refuses to run as root; it switches user itself
        with open(base / "adm" / "console.log", "ab") as console:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True
            )
        server = XRootDServer(base, port, proc)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline and server.alive():
            if _answers(port):
                return server
            time.sleep(0.02)
        server.stop()
        logs = [p for p in (base / "adm").glob("*.log*") if p.is_file()]
        last_error = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
    pytest.fail(f"xrootd did not start in {base}:\n{last_error}")


ServerFactory = Callable[[], XRootDServer]


@pytest.fixture(scope="session")
def xrootd_factory() -> Iterator[ServerFactory]:
    """Starts fresh XRootD servers on demand; all are stopped, and their directories removed, at the end."""
    servers: list[XRootDServer] = []
    bases: list[Path] = []

    def start() -> XRootDServer:
        # Under /tmp directly, not pytest's tmp_path: its parents are private to root and xrootd could not enter.
        base = Path(tempfile.mkdtemp(prefix="gridpilot-xrootd-"))
        bases.append(base)
        server = start_server(base)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd_server(xrootd_factory: ServerFactory) -> XRootDServer:
    """A server shared by the whole session; tests use their own directories on it."""
    return xrootd_factory()


@pytest.fixture(scope="session")
def xrootd_server2(xrootd_factory: ServerFactory) -> XRootDServer:
    """A second, independent server: a second storage element on another "site"."""
    return xrootd_factory()


def bindings_or_skip() -> None:
    try:
        import XRootD.client  # noqa: F401
    except ImportError as e:
        require_or_skip(f"XRootD Python bindings not importable (pip install xrootd): {e}")


def commands_or_skip() -> None:
    if shutil.which("xrdcp") is None or shutil.which("xrdfs") is None:
        require_or_skip("no xrdcp/xrdfs (Debian package xrootd-client)")


def backend_or_skip(backend: Optional[str]) -> None:
    """Skip (or fail under GRIDPILOT_REQUIRE_ALL) when the named XRootD client back end is missing."""
    if backend in (None, "bindings"):
        bindings_or_skip()
    if backend == "commands":
        commands_or_skip()
