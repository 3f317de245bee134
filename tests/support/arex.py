"""A real NorduGrid ARC A-REX (6.17) for the tests of the ARC paths (pytest plugin, loaded from conftest.py).

Everything lives in one temp directory: a test CA, a host certificate for `localhost` and a user certificate from
`arcctl test-ca --ca-dir` (nothing is written under /etc: the user's DN is allowed by a `subject` rule of the
config, not by the allowed-subjects file that `usercert` would append to), an arc.conf that passes
arc-config-check (fork LRMS, REST through `[arex/ws/jobs]`, every path private), found by the start scripts
through ARC_CONFIG. Two daemons run in the foreground as children of the test session: A-REX itself
(arc-arex-start) and its web-service front end (a copy of arc-arex-ws-start that also puts
`<tcp:Interface>127.0.0.1</tcp:Interface>` into the listener, so the service stays on loopback). Both are
stopped by SIGTERM to the pids we started, never by name. The DH parameters are pre-seeded (RFC 7919's ffdhe2048
from openssl, instant), else the first start spends minutes generating 4096-bit ones.

Two fixtures: `arex_server` (fork LRMS) and `arex_slurm_server` (the LRMS is the session's single-node Slurm of
support/slurm_cluster.py, its partition the default queue; the daemons get its SLURM_CONF). The port is picked free
here and bound later by the ws daemon: when another process took it meanwhile, the daemon says so ("Failed to bind
socket") and exits, and start() tries again on another port (at most _PORT_ATTEMPTS).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import urllib3
from support.require import require_or_skip
from support.slurm_cluster import PARTITION as SLURM_PARTITION
from support.slurm_cluster import SlurmCluster

ARC_SHARE = Path("/usr/share/arc")
ARC_LIB = Path("/usr/lib/arc")
REST_PATH = "/arex/rest/1.0"
#: The jobs' mapped identity: the DN of the test user is mapped to it, and it must traverse the session dirs.
MAPPED_USER = "nobody"
MAPPED_GROUP = "nogroup"  # Debian's; missing_reason() names it when a machine lacks it
USER_NAME = "gridpilot-tester"
_READY_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 30.0

_ARC_CONF = """\
[common]
hostname = localhost
x509_host_key = {certs}/host-localhost-key.pem
x509_host_cert = {certs}/host-localhost-cert.pem
x509_cert_dir = {ca}

[authgroup:zero]
subject = {user_dn}

[mapping]
map_to_user = zero {user}:{group}

[lrms]
{lrms}

[arex]
controldir = {base}/control
sessiondir = {base}/session
runtimedir = {base}/runtime
tmpdir = {base}/tmp
logfile = {base}/log/arex.log
pidfile = {base}/run/arex.pid
loglevel = 3

[arex/data-staging]
logfile = {base}/log/datastaging.log

[arex/ws]
wsurl = https://localhost:{port}/arex
logfile = {base}/log/ws-interface.log
pidfile = {base}/run/arex-ws.pid

[arex/ws/jobs]
allowaccess = zero

[infosys]
logfile = {base}/log/infoprovider.log

[infosys/glue2]

[infosys/cluster]

[queue:{queue}]
"""

#: The [lrms] lines for each LRMS a test A-REX can have. Slurm: no accounting database here (sacct would fail), the
#: cluster's clients in /usr/bin, found through the SLURM_CONF the daemons get (_env).
_LRMS = {"fork": "lrms = fork {queue}",
         "slurm": "lrms = slurm {queue}\nslurm_use_sacct = no\nslurm_bin_path = /usr/bin"}
#: How many ports start() tries: a free port picked here may be taken by another process before A-REX binds it.
_PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """The ws daemon could not bind the port start() picked: another process took it first."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_reason() -> Optional[str]:
    for path, package in ((ARC_SHARE / "arc-arex-start", "nordugrid-arc-arex"),
                          (ARC_SHARE / "arc-arex-ws-start", "nordugrid-arc-arex"),
                          (ARC_LIB / "arc-config-check", "nordugrid-arc-arex")):
        if not path.exists():
            return f"no {path} (Debian package {package})"
    if shutil.which("arcctl") is None:
        return "no arcctl (Debian package nordugrid-arc-arcctl)"
    try:
        pwd.getpwnam(MAPPED_USER)
        grp.getgrnam(MAPPED_GROUP)
    except KeyError:
        return f"no user {MAPPED_USER!r} or group {MAPPED_GROUP!r} to map the test user's jobs to"
    if shutil.which("openssl") is None:
        return "no openssl (Debian package openssl)"
    if os.geteuid() != 0:
        return "a private A-REX needs root here (its daemons map jobs to another user)"
    return None


class ArexServer:
    """One running A-REX. `rest_url` is its REST 1.0 root; `http()` is a client holding the test user's cert."""

    def __init__(self, base: Path, lrms: str = "fork", slurm_conf: Optional[Path] = None,
                 queue: str = "fork") -> None:
        if lrms not in _LRMS or (lrms == "slurm") != (slurm_conf is not None):
            raise ValueError(f"lrms {lrms!r} with slurm_conf {slurm_conf}: fork without, slurm with a slurm.conf")
        self.base = base
        self.lrms = lrms
        self.slurm_conf = slurm_conf
        #: The A-REX queue (for Slurm: the partition) jobs go to when their description names none.
        self.queue = queue
        #: Where start() gets its port candidates (a test of the port race gives it a taken one first).
        self.pick_port: Callable[[], int] = _free_port
        #: The ports start() tried before the one it runs on (taken by someone else meanwhile).
        self.ports_lost: List[int] = []
        self.ca_dir = base / "ca"
        self.certs = base / "certs"
        self.conf = base / "arc.conf"
        self.port = 0
        self.procs: List[subprocess.Popen[bytes]] = []
        #: Seconds from starting the daemons to the first 200 from REST (ENVIRONMENT.md measured 6-10 s).
        self.ready_s = 0.0
        #: Seconds `stop()` took (ENVIRONMENT.md measured 4-9 s).
        self.stop_s = 0.0

    # -- what tests use -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/arex"

    @property
    def rest_url(self) -> str:
        return f"https://localhost:{self.port}{REST_PATH}"

    @property
    def user_cert(self) -> Path:
        return self.certs / f"client-{USER_NAME}-cert.pem"

    @property
    def user_key(self) -> Path:
        return self.certs / f"client-{USER_NAME}-key.pem"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ARC-TestCA-gridpilot.pem"

    def http(self, timeout: float = 30.0) -> urllib3.HTTPSConnectionPool:
        """A connection pool to 127.0.0.1 that checks the server's certificate (issued for localhost) against the
        test CA only and presents the test user's certificate. Environment CA variables play no part."""
        return urllib3.HTTPSConnectionPool(
            "127.0.0.1", self.port, cert_reqs=ssl.CERT_REQUIRED, ca_certs=str(self.ca_file),
            cert_file=str(self.user_cert), key_file=str(self.user_key), server_hostname="localhost",
            assert_hostname="localhost", timeout=urllib3.Timeout(total=timeout), retries=False)

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def log_tail(self, n: int = 3000) -> str:
        out = []
        for p in sorted((self.base / "log").glob("*.log")):
            out.append(f"--- {p.name}:\n{p.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    # -- start ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        b = self.base
        for d in ("ca", "certs", "control", "session", "runtime", "tmp", "log", "run", "bin"):
            (b / d).mkdir(parents=True, exist_ok=True)
        # The mapped user must traverse to its job's session directory (mkdtemp made the base 0700); A-REX makes
        # each job's directory itself and gives it to that user. tmp is a /tmp of its own, for every user.
        for d in (b, b / "session", b / "control"):
            os.chmod(d, 0o755)
        os.chmod(b / "tmp", 0o1777)
        self._make_certs()
        # Pre-seeded DH parameters: the ws start script only generates them when the file is missing or invalid.
        dhparam = b / "control" / "dhparam.pem"
        self._run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048",
                   "-out", str(dhparam)], "openssl genpkey")
        os.chmod(dhparam, 0o600)
        ws_start = b / "bin" / "arc-arex-ws-start"
        original = (ARC_SHARE / "arc-arex-ws-start").read_text()
        listen = "<tcp:Listen><tcp:Port>$arex_port</tcp:Port></tcp:Listen>"
        if listen not in original:
            raise RuntimeError(f"{ARC_SHARE / 'arc-arex-ws-start'} no longer holds {listen!r}: cannot keep A-REX "
                               "on 127.0.0.1")
        ws_start.write_text(original.replace(
            listen, "<tcp:Listen><tcp:Port>$arex_port</tcp:Port><tcp:Interface>127.0.0.1</tcp:Interface></tcp:Listen>"))
        os.chmod(ws_start, 0o755)
        user_dn = self._run(["openssl", "x509", "-in", str(self.user_cert), "-noout", "-subject", "-nameopt",
                             "compat"], "openssl x509").strip().removeprefix("subject=")
        for attempt in range(_PORT_ATTEMPTS):
            self.port = self.pick_port()
            self.conf.write_text(_ARC_CONF.format(base=b, certs=self.certs, ca=self.ca_dir, user_dn=user_dn,
                                                  user=MAPPED_USER, group=MAPPED_GROUP, port=self.port,
                                                  lrms=_LRMS[self.lrms].format(queue=self.queue), queue=self.queue))
            check = subprocess.run([str(ARC_LIB / "arc-config-check"), "--config", str(self.conf)],
                                   capture_output=True, text=True, timeout=60, env=self._env())
            if check.returncode != 0:
                raise RuntimeError(f"arc-config-check refuses {self.conf}:\n{check.stdout}{check.stderr}")
            started = time.monotonic()
            ws_console = b / "log" / f"{ws_start.name}.console.log"
            console_from = ws_console.stat().st_size if ws_console.exists() else 0
            # -f: the start scripts exec arched, so it stays in the foreground and the pid we hold is the daemon's.
            for script in (ARC_SHARE / "arc-arex-start", ws_start):
                with open(b / "log" / f"{script.name}.console.log", "ab") as console:
                    self.procs.append(subprocess.Popen(
                        [str(script), "-f"], cwd=b, env=self._env(), stdin=subprocess.DEVNULL, stdout=console,
                        stderr=console, start_new_session=True))
            try:
                self._wait_rest(ws_console, console_from)
            except _PortTaken:
                # Someone bound the port between _free_port() and the ws daemon: stop both, try another one.
                self.ports_lost.append(self.port)
                self.stop()
                self.procs = []
                if attempt + 1 == _PORT_ATTEMPTS:
                    raise RuntimeError(f"ports {self.ports_lost} were all taken before A-REX could bind them\n"
                                       + self.log_tail()) from None
                continue
            self.ready_s = time.monotonic() - started
            return

    def _env(self) -> dict:
        env = dict(os.environ, ARC_CONFIG=str(self.conf), TMPDIR=str(self.base / "tmp"))
        if self.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.slurm_conf)
        return env

    def _make_certs(self) -> None:
        test_ca = ["arcctl", "test-ca", "--ca-dir", str(self.ca_dir), "--ca-id", "gridpilot"]
        self._run(test_ca + ["init"], "arcctl test-ca init")
        self._run(test_ca + ["hostcert", "-n", "localhost", "-f"], "arcctl test-ca hostcert", cwd=self.certs)
        # --no-auth: do not append the DN to /etc/grid-security/testCA.allowed-subjects (arc.conf names it itself).
        self._run(test_ca + ["usercert", "-n", USER_NAME, "-f", "--no-auth"], "arcctl test-ca usercert",
                  cwd=self.certs)

    def _run(self, cmd: List[str], name: str, cwd: Optional[Path] = None) -> str:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {r.returncode}): {r.stdout.strip()} {r.stderr.strip()}")
        return r.stdout

    def _wait_rest(self, ws_console: Path, console_from: int) -> None:
        """Until GET /jobs answers 200 with the user's certificate: both daemons up, TLS and mapping working.
        _PortTaken when the ws daemon exited because its port was taken (its console log, from `console_from`,
        says so)."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last = ""
        pool = self.http(timeout=5.0)
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    with open(ws_console, "rb") as f:
                        f.seek(console_from)
                        said = f.read().decode(errors="replace")
                    if f"Failed to bind socket for 127.0.0.1:{self.port}" in said:
                        raise _PortTaken(self.port)
                    codes = [p.poll() for p in self.procs]
                    raise RuntimeError(f"an A-REX daemon exited during start-up (exit codes {codes})\n"
                                       + self.log_tail())
                try:
                    r = pool.request("GET", f"{REST_PATH}/jobs", headers={"Accept": "application/json"})
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}: {r.data[:300]!r}"
                except urllib3.exceptions.HTTPError as e:
                    last = repr(e)
                time.sleep(0.2)
        finally:
            pool.close()
        raise RuntimeError(f"A-REX REST did not answer in {_READY_TIMEOUT_S:.0f} s (last: {last})\n"
                           + self.log_tail())

    # -- stop ----------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM to both daemons (the pids we started), SIGKILL after the deadline; then whatever they left in
        their sessions (helpers, fork-LRMS payloads: a fork kill can leave one running) is ended by pid too."""
        started = time.monotonic()
        sessions = [p.pid for p in self.procs]
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = _in_sessions(sessions)
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            wait_until = time.monotonic() + 5.0
            while left and _in_sessions(sessions) and time.monotonic() < wait_until:
                time.sleep(0.05)
        self.stop_s = time.monotonic() - started


def _in_sessions(sessions: List[int]) -> List[int]:
    """Live processes whose session id is one of `sessions` (each daemon was started as a session leader)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # After the command: state, ppid, pgrp, session; zombies are already dead.
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(int(entry.name))
    return found


def _serve(**kwargs: object) -> Iterator[ArexServer]:
    reason = missing_reason()
    if reason is not None:
        require_or_skip(reason)
    # Under /tmp directly, not pytest's tmp_path: its parents are private to root and the mapped user could not enter.
    base = Path(tempfile.mkdtemp(prefix="gridpilot-arex-"))
    server = ArexServer(base, **kwargs)  # type: ignore[arg-type]
    try:
        try:
            server.start()
        except RuntimeError as e:
            pytest.fail(f"A-REX did not start in {base}: {e}", pytrace=False)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def arex_server() -> Iterator[ArexServer]:
    """A private A-REX (fork LRMS) on 127.0.0.1 for the whole session; its directory is removed at the end."""
    yield from _serve()


@pytest.fixture(scope="session")
def arex_slurm_server(slurm_cluster: SlurmCluster) -> Iterator[ArexServer]:
    """A private A-REX on 127.0.0.1 whose LRMS is the session's single-node Slurm (tests/support/slurm_cluster.py):
    its jobs go to the cluster's partition as sbatch jobs of the mapped user. A second instance beside
    `arex_server` (own port, control and session directories)."""
    yield from _serve(lrms="slurm", slurm_conf=slurm_cluster.conf, queue=SLURM_PARTITION)
