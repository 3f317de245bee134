"""Several central hosts behind HAProxy, on one machine: real `gridpilot central serve` processes on ports of their
own (the multi-host layout), one PostgreSQL database, and HAProxy (Debian `haproxy`) in front running the
repository's deploy/haproxy/gridpilot.cfg with only its addresses, ports and paths replaced. TLS on both links, as
the file has it: the client verifies HAProxy, HAProxy verifies each central, with the test's CA (support.tls).
Shared by tests/integration/test_central_proxy.py and benches/bench_proxy.py."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from gridpilot.client import CentralClient
from gridpilot.endpoints import URL_FILE
from gridpilot.errors import CentralError, CentralUnreachable
from support import paths
from support.pgserver import free_port
from support.require import require_or_skip
from support.tls import Pki

CONFIG = paths.ROOT / "deploy" / "haproxy" / "gridpilot.cfg"
ERRORS = paths.ROOT / "deploy" / "haproxy" / "errors"
#: The names the file gives its two centrals, in order.
SERVERS = ("central1", "central2")


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 90.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def render_config(*, port: int, backends: Sequence[int], frontend_pem: Path, ca_file: Path,
                  stats_socket: Path) -> str:
    """deploy/haproxy/gridpilot.cfg for this machine: every replaced text must be found exactly as often as said,
    so a change to the file that this layout no longer fits fails here rather than testing something else."""
    assert len(backends) == len(SERVERS), f"the example configures {len(SERVERS)} centrals"
    subs: List[Tuple[str, str, int]] = [
        ("log /dev/log local0", "log stderr format raw local0", 1),
        ("/run/haproxy/gridpilot.sock", str(stats_socket), 1),
        # Two descriptors per connection: 20,000 would want more open files than this machine's hard limit allows.
        ("maxconn 20000", "maxconn 2000", 1),
        ("/etc/haproxy/gridpilot/", f"{ERRORS}/", 3),
        ("bind :8765 ", f"bind 127.0.0.1:{port} ", 1),
        ("/etc/haproxy/certs/central.pem", str(frontend_pem), 1),
        ("/etc/gridpilot/ca.pem", str(ca_file), len(SERVERS)),
        ("10.0.0.11:8765", f"127.0.0.1:{backends[0]}", 1),
        ("10.0.0.12:8765", f"127.0.0.1:{backends[1]}", 1),
        # The test's host certificate names localhost (and 127.0.0.1), not the example's host names.
        ("verifyhost central1.example.org", "verifyhost localhost", 1),
        ("verifyhost central2.example.org", "verifyhost localhost", 1),
    ]
    # Comments are left as they are (they name the same paths); only the directives are rewritten.
    lines = CONFIG.read_text().splitlines(keepends=True)
    is_directive = [not line.lstrip().startswith("#") for line in lines]
    for old, new, count in subs:
        found = sum(line.count(old) for line, d in zip(lines, is_directive) if d)
        assert found == count, f"{CONFIG}: {old!r} found {found} times in its directives, expected {count}"
        lines = [line.replace(old, new) if d else line for line, d in zip(lines, is_directive)]
    return "".join(lines)


class Haproxy:
    """HAProxy in the foreground (-db) on `config`; `stats()` reads its stats socket."""

    def __init__(self, config: Path, stats_socket: Path, port: int, log: Path) -> None:
        exe = shutil.which("haproxy")
        if exe is None:
            require_or_skip("no haproxy (Debian package haproxy)")
        self.config, self.stats_socket, self.port, self.log = config, stats_socket, port, log
        check = subprocess.run([str(exe), "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, f"haproxy -c refused the configuration:\n{check.stdout}{check.stderr}"
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([str(exe), "-db", "-f", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"https://127.0.0.1:{port}"
        wait_for(lambda: self._ready(), "haproxy's stats socket and port", timeout=60)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            self.stats()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def stats(self) -> Dict[str, Dict[str, str]]:
        """`show stat` of the backend's servers by name: status (UP, DOWN, "UP 1/3" ...), stot (requests sent)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == "centrals" and r["svname"] in SERVERS}

    def status(self, server: str) -> str:
        return self.stats()[server]["status"]

    def served(self, server: str) -> int:
        return int(self.stats()[server]["stot"] or 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


class CentralHost:
    """One `gridpilot central serve` process over https on its own port and state directory: a central host."""

    def __init__(self, name: str, state_dir: Path, db_url: str, port: int, pki: Pki) -> None:
        self.name, self.state_dir, self.db_url, self.port, self.pki = name, state_dir, db_url, port, pki
        self.url = f"https://127.0.0.1:{port}"
        self.proc: Optional[subprocess.Popen] = None
        self.log = state_dir.parent / f"{name}.log"

    def start(self) -> CentralHost:
        # serve listens before it opens the database and writes its URL file after: a probe sent before the file is
        # there waits in the listen queue, and one that timed out there leaves its connection behind (held open by
        # this process, it keeps uvicorn's graceful stop waiting its full 10 s).
        url_file = self.state_dir / URL_FILE
        url_file.unlink(missing_ok=True)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "central", "serve", "--state-dir", str(self.state_dir), "--db",
             self.db_url, "--port", str(self.port), "--certfile", str(self.pki.host_cert), "--keyfile",
             str(self.pki.host_key)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self._running() and url_file.exists(), f"{self.name} to write {url_file}", timeout=120)
        probe = CentralClient(self.url, None, retries=0, timeout=60, ca_file=str(self.pki.ca))
        wait_for(lambda: self._answers(probe), f"{self.name} to answer on {self.url}", timeout=120, step=0.2)
        probe.close()
        return self

    def _running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def _answers(self, probe: CentralClient) -> bool:
        self._running()
        try:
            return probe.health()["status"] == "ok"
        except (CentralUnreachable, CentralError):
            return False

    def client(self, token: Optional[str], **kw: object) -> CentralClient:
        """A client to this host directly, past the proxy."""
        return CentralClient(self.url, token, ca_file=str(self.pki.ca), **kw)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: the host dies with its requests in flight, as a crashed machine's would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self) -> None:
        """SIGTERM: uvicorn finishes the requests in flight, then exits; stop() waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@dataclass
class ProxiedCentrals:
    hosts: List[CentralHost]
    proxy: Haproxy
    admin_token: str
    ca_file: Path

    @property
    def url(self) -> str:
        return self.proxy.url

    def client(self, token: Optional[str], **kw: object) -> CentralClient:
        """A client to the proxy's address, as pilots and users would have."""
        return CentralClient(self.url, token, ca_file=str(self.ca_file), **kw)  # type: ignore[arg-type]

    def wait_status(self, server: str, status: str, timeout: float = 90.0) -> None:
        wait_for(lambda: self.proxy.status(server) == status, f"HAProxy to see {server} {status} "
                 f"(it says {self.proxy.status(server)!r})", timeout=timeout)

    def stop(self) -> None:
        errors = []
        # All hosts told at once, so their graceful shutdowns overlap.
        for stop in [self.proxy.stop, *(h.terminate for h in self.hosts), *(h.stop for h in self.hosts)]:
            try:
                stop()
            except Exception as e:  # stop the others whatever one did
                errors.append(e)
        if errors:
            raise errors[0]


def start_proxied_centrals(root: Path, db_url: str, pki: Pki) -> ProxiedCentrals:
    """Two central hosts on `db_url` and HAProxy in front, all up; stop() ends every process (also on failure here).

    The first host's `central init` makes the schema, the signing key and the admin token; the second gets a copy of
    the key file (0600), as docs/scaling.md tells operators to do."""
    from gridpilot.central.serve import init
    from gridpilot.central.settings import SIGNING_KEY_FILE, CentralSettings

    if shutil.which("haproxy") is None:  # said before anything is started
        require_or_skip("no haproxy (Debian package haproxy)")
    states = [root / name for name in SERVERS]
    admin = init(CentralSettings.from_args(states[0], db_url)).admin_token
    states[1].mkdir(mode=0o700)
    shutil.copy(states[0] / SIGNING_KEY_FILE, states[1] / SIGNING_KEY_FILE)
    os.chmod(states[1] / SIGNING_KEY_FILE, 0o600)

    frontend_pem = root / "frontend.pem"
    frontend_pem.write_text(pki.host_cert.read_text() + pki.host_key.read_text())
    os.chmod(frontend_pem, 0o600)
    hosts = [CentralHost(name, state, db_url, free_port(), pki) for name, state in zip(SERVERS, states)]
    started: List[CentralHost] = []
    try:
        for h in hosts:
            started.append(h.start())
        stats_socket = root / "haproxy.sock"
        port = free_port()
        config = root / "haproxy.cfg"
        config.write_text(render_config(port=port, backends=[h.port for h in hosts], frontend_pem=frontend_pem,
                                        ca_file=pki.ca, stats_socket=stats_socket))
        proxy = Haproxy(config, stats_socket, port, root / "haproxy.log")
    except BaseException:
        for h in started:
            h.stop()
        raise
    layout = ProxiedCentrals(hosts, proxy, admin, pki.ca)
    try:
        for name in SERVERS:
            layout.wait_status(name, "UP")
    except BaseException:
        layout.stop()
        raise
    return layout
