"""Secrets stay their owner's: the files a real `central init`, `central serve`, `central token -o` and `gridpilot ce`
make (the token signing key, the SQLite database and its -wal/-shm, admin.token, a CE token file, a pilot's token and
start-up script) are 0600 (the script 0700) in 0700 directories whatever the umask, and user `nobody` reads none of
them, neither through their directories nor with the directories opened up to it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest

from gridpilot.ce.backend import Resources
from gridpilot.ce.script import PilotScript, write_pilot_files
from gridpilot.client import CentralClient
from gridpilot.private_files import make_private_dir, write_private

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody (and chown) needs root")

SITE, CE = "SECRETS", "SECRETS::CE1"
#: A stand-in installation's `gridpilot`: notes its pid next to the token file and waits, so the pilot (and its
#: token file, which the script deletes when the pilot ends) stays while the test looks.
STAND_IN = '#!/bin/sh\necho $$ > "$(dirname "$GRIDPILOT_TOKEN_FILE")/runner.pid"\nexec sleep 600\n'


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def readable_by_nobody(paths: Sequence[Path]) -> List[str]:
    """The paths user nobody (group nogroup, no other groups) can read a byte of."""
    nobody = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = nobody.pw_gid
    script = 'for f; do head -c1 -- "$f" >/dev/null 2>&1 && echo "$f"; done; exit 0'
    r = subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, paths)], user=nobody.pw_uid, group=gid,
                       extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def gridpilot(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real command, with umask 0: whatever it makes private it must make so itself."""
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, timeout=180,
                          umask=0, **kw)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory nobody may pass through but not list (pytest's own tmp_path is closed to other users, which
    would make every check below pass for the wrong reason)."""
    d = Path(tempfile.mkdtemp(prefix="gridpilot-secrets-", dir="/tmp"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_central_and_ce_secrets_are_their_owners_alone(base):
    state = base / "state"
    r = gridpilot("central", "init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    init_stdout = r.stdout
    admin_token = (state / "admin.token").read_text().strip()

    serve = subprocess.Popen([sys.executable, "-m", "gridpilot", "central", "serve", "--state-dir", str(state),
                              "--port", "0", "--sweep-interval", "0", "--log-level", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, umask=0)
    pilots: List[Path] = []
    try:
        wait_for("central.url", lambda: (state / "central.url").exists() or serve.poll() is not None)
        assert serve.poll() is None, "central serve exited"
        url = (state / "central.url").read_text().strip()
        admin = CentralClient(url, admin_token)
        wait_for("central to answer", lambda: _answers(admin))
        admin.submit('Executable = "/bin/true";\nTTL = 600;\n', name="secret.jdl")  # work for the CE, and a WAL
        assert (state / "central.db-wal").exists() and (state / "central.db-shm").exists()

        ce_token = base / "ce.token"
        r = gridpilot("central", "token", "--state-dir", str(state), "--role", "ce", "--subject", "ce1",
                      "--site", SITE, "--ce", CE, "-o", str(ce_token))
        assert r.returncode == 0, r.stderr

        install = base / "install"
        (install / "bin").mkdir(parents=True)
        (install / "bin" / "gridpilot").write_text(STAND_IN)
        (install / "bin" / "gridpilot").chmod(0o755)
        conf = base / "ce.yaml"
        conf.write_text(f"central_url: {url}\ntoken_file: {ce_token}\nbackend: local\ncores: 1\nmemory_mb: 500\n"
                        f"wall_time: 900\ninstall_path: {install}\npilot_dir: {base / 'pilots'}\n")
        r = gridpilot("ce", "--config", str(conf), "--once")
        assert r.returncode == 0, r.stdout + r.stderr
        dirs = [d for d in (base / "pilots").iterdir() if d.is_dir()]
        assert len(dirs) == 1, r.stdout
        pilot = dirs[0]
        wait_for("the pilot's stand-in runner", lambda: (pilot / "runner.pid").exists()
                 and (pilot / "runner.pid").read_text().strip() != "")
        pilots.append(pilot)

        secrets = {state / "central.db": 0o600, state / "central.db-wal": 0o600, state / "central.db-shm": 0o600,
                   state / "signing.key": 0o600, state / "admin.token": 0o600, ce_token: 0o600,
                   pilot / "agent.token": 0o600, pilot / "pilot.sh": 0o700}
        assert readable_by_nobody(list(secrets)) == []
        assert {str(p): oct(mode(p)) for p in secrets} == {str(p): oct(m) for p, m in secrets.items()}
        assert (oct(mode(state)), oct(mode(pilot))) == (oct(0o700), oct(0o700))
        # With the directories opened to nobody, the files' own modes still keep it out; the files made with the
        # umask's 0 (central.url) or on purpose readable (pilot.json) show that nobody does get through.
        (base / "control").write_text("not secret\n")
        (base / "control").chmod(0o644)
        try:
            os.chmod(state, 0o711)
            os.chmod(pilot, 0o711)
            controls = [base / "control", state / "central.url", pilot / "pilot.json"]
            assert readable_by_nobody([*secrets, *controls]) == [str(p) for p in controls]
        finally:
            os.chmod(state, 0o700)
            os.chmod(pilot, 0o700)
        assert init_stdout == "", "init printed the admin token without --print-token"
    finally:
        for pilot in pilots:  # SIGTERM to the pilot's session, as the local back end removes one
            try:
                os.killpg(os.getpgid(int((pilot / "runner.pid").read_text())), signal.SIGTERM)
            except ProcessLookupError:
                pass
            wait_for("the pilot to end and delete its token", lambda: not (pilot / "agent.token").exists(), 60)
        serve.terminate()
        serve.wait(60)


def _answers(client: CentralClient) -> bool:
    try:
        client.health()
        return True
    except Exception:
        return False


def test_init_narrows_a_state_directory_and_database_an_older_gridpilot_left_open(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    old = os.umask(0o022)
    try:
        # An older gridpilot's database, with a connection holding its -wal and -shm (0644, as the umask made them).
        conn = sqlite3.connect(state / "central.db")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    finally:
        os.umask(old)
    try:
        assert {mode(state / f"central.db{s}") for s in ("", "-wal", "-shm")} == {0o644}
        r = gridpilot("central", "init", "--state-dir", str(state))
        assert r.returncode == 0, r.stderr
        assert mode(state) == 0o700
        assert {f"central.db{s}": oct(mode(state / f"central.db{s}")) for s in ("", "-wal", "-shm")} == {
            f"central.db{s}": oct(0o600) for s in ("", "-wal", "-shm")}
    finally:
        conn.close()


@needs_root
def test_a_state_directory_that_is_not_ours_is_left_as_it_is_with_a_warning(tmp_path):
    state = tmp_path / "theirs"
    state.mkdir()
    os.chown(state, pwd.getpwnam("nobody").pw_uid, -1)
    os.chmod(state, 0o777)
    r = gridpilot("central", "init", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert mode(state) == 0o777
    uid = pwd.getpwnam("nobody").pw_uid
    assert (f"{state} is mode 0777 and owned by uid {uid}, not by this user (uid 0): other users may read the "
            f"secrets in it; its owner should run `chmod go= {state}`") in r.stderr
    assert mode(state / "central.db") == 0o600 and mode(state / "admin.token") == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_private_files_and_directories_have_their_mode_exactly_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        d = make_private_dir(tmp_path / "a" / "b")
        write_private(d / "replaced", "one")
        write_private(d / "replaced", "two")
        write_private(d / "new" / "secret", b"x")  # a missing directory for it is made private too
        write_private(d / "script", "#!/bin/sh\n", mode=0o700, exclusive=True)
    finally:
        os.umask(old)
    assert (mode(d), mode(d / "new")) == (0o700, 0o700)
    assert (d / "replaced").read_text() == "two" and mode(d / "replaced") == 0o600
    assert mode(d / "new" / "secret") == 0o600 and mode(d / "script") == 0o700
    assert sorted(p.name for p in d.iterdir()) == ["new", "replaced", "script"], "no temporary file left"
    with pytest.raises(FileExistsError):
        write_private(d / "script", "again", exclusive=True)
    with pytest.raises(ValueError, match="not private"):
        write_private(d / "open", "x", mode=0o644)


@needs_root
def test_a_pilot_users_files_are_that_users_alone(tmp_path):
    """With pilot_user, the pilot's directory, token and script are given to that user, still 0700/0600/0700."""
    top = tmp_path / "pilots"
    top.mkdir()
    spec = PilotScript(name="p1", central_url="http://127.0.0.1:9", site=SITE, ce=CE, backend="local",
                       resources=Resources(1, 500, 900), install_path="/nowhere",
                       token_file=top / "p1" / "agent.token", workdir=str(top / "p1" / "work"))
    old = os.umask(0)
    try:
        script = write_pilot_files(top / "p1", spec, "secret-token", user="nobody")
    finally:
        os.umask(old)
    uid = pwd.getpwnam("nobody").pw_uid
    for path, want in ((top / "p1", 0o700), (spec.token_file, 0o600), (script, 0o700)):
        st = os.stat(path)
        assert (path.name, st.st_uid, oct(stat.S_IMODE(st.st_mode))) == (path.name, uid, oct(want))
