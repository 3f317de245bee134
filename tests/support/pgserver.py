"""A throwaway PostgreSQL server in a temp directory, for the central tests and benchmarks.

Debian's server refuses to run as root (ENVIRONMENT.md), so as root initdb and pg_ctl run as `postgres`
through runuser, on a data directory that user owns. It listens on 127.0.0.1 and a free port only, with its
socket in the data directory, so it never meets a system cluster.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence


def find_bindir() -> Optional[Path]:
    """The newest /usr/lib/postgresql/<v>/bin holding initdb and pg_ctl, else the ones on PATH, else None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: float(p.split("/")[-2]), reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_reason() -> Optional[str]:
    """Why no server can be started here, or None when one can."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql`"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no `postgres` user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` (util-linux) is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl start on a temp directory; `url(dbname)` for SQLAlchemy; `stop()` removes everything.

    `durable=False` turns fsync and synchronous commit off: the tests create and drop many databases and
    need speed, not crash safety. The benchmarks keep the defaults so their numbers mean something.
    """

    def __init__(self, *, durable: bool = False, extra: Sequence[str] = ()) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(missing_reason() or "no PostgreSQL")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gridpilot-pg-"))
        self.datadir = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o755)
        try:
            self._start(durable, extra)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)  # a failed start leaves nothing behind
            raise
        self._next = 0

    def _start(self, durable: bool, extra: Sequence[str]) -> None:
        self._run(["initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        opts: List[str] = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.datadir}",
            "-c max_connections=200",
        ]
        if not durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        opts += list(extra)
        self._run(
            ["pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
             " ".join(opts), "start"]
        )

    def _null_device(self) -> Optional[str]:
        """A character device standing in for /dev/null when the host's is a plain file, else None.

        initdb and pg_ctl run shell commands that redirect to /dev/null; on a shared build machine where
        something replaced /dev/null with a root-owned regular file, those fail with "cannot create /dev/null"
        for the postgres user. As root we give the server its own mount namespace with a real null device.
        """
        try:
            if stat.S_ISCHR(os.stat("/dev/null").st_mode):
                return None
        except OSError:
            pass
        node = self.root / "null"
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(node, 0o666)
        return str(node)

    def _run(self, argv: List[str]) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
            null = self._null_device()
            if null is not None:
                script = 'mount --bind "$0" /dev/null && exec "$@"'
                cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, null, *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(self.root))
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({out.returncode}): {out.stderr.strip()}\n{tail}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "gp") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self._next += 1
        name = f"{prefix}_{os.getpid()}_{self._next}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._run(["pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"])
        except RuntimeError as e:
            # Never leave a server behind: signal the postmaster we started ourselves (its pid is in the file).
            print(f"pgserver: {e}; sending SIGQUIT to the postmaster", file=sys.stderr)
            try:
                pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)
            except (OSError, ValueError, IndexError):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(self.root)
                break
            except OSError:
                time.sleep(0.1)
