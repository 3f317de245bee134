"""Central over https and every client verifying it with a CA bundle: the client itself, the user commands
(--ca-file, GRIDPILOT_CA_FILE), `central serve --certfile/--keyfile`, the runner's and the CE's `ca_file`, and a
pilot that a CE submitted running a job to DONE over https, its output registered by the JobWrapper. The CA is the
test's own (tests/support/tls.py), never the host's bundle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.tls import Pki, make_pki

from gridpilot.ce import make_backend
from gridpilot.ce.factory import Factory
from gridpilot.ce.script import pilot_environment
from gridpilot.ce.settings import CESettings, load_settings
from gridpilot.central.serve import DEFAULT_SE_NAME, EmbeddedCentral
from gridpilot.cli import main
from gridpilot.client import CentralClient
from gridpilot.config import load_config
from gridpilot.errors import CentralUnreachable, CentralUntrusted, ConfigError

SITE = "GRIDPILOT::TLS"
CE = "GRIDPILOT::TLS::CE1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def central(tmp_path, pki):
    with EmbeddedCentral(tmp_path / "central", certfile=str(pki.host_cert), keyfile=str(pki.host_key),
                         ca_file=str(pki.ca), sweep_interval_s=0) as c:
        yield c


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("GRIDPILOT_TOKEN", "GRIDPILOT_TOKEN_FILE", "GRIDPILOT_CENTRAL_URL", "GRIDPILOT_CA_FILE",
                "GRIDPILOT_DB_URL", "GRIDPILOT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GRIDPILOT_STATE_DIR", str(tmp_path / "no-state"))
    return monkeypatch


# -- the client ----------------------------------------------------------------------------------------------------

def test_a_client_with_the_right_ca_talks_to_central(central, pki):
    assert central.url.startswith("https://127.0.0.1:")
    client = CentralClient(central.url, central.admin_token, ca_file=str(pki.ca))
    assert client.whoami()["role"] == "admin"
    # The CA's text does as well (what the JobWrapper gets, in a container that may not see the file).
    assert CentralClient(central.url, central.admin_token, ca_data=pki.ca.read_text()).health()["status"] == "ok"


def test_without_the_ca_central_is_not_trusted_at_once_and_says_what_to_give(central, monkeypatch):
    waits = []
    monkeypatch.setattr(CentralClient, "_delay", lambda self, attempt: waits.append(attempt) or 0.0)
    client = CentralClient(central.url, central.admin_token, retries=5)
    with pytest.raises(CentralUntrusted) as e:
        client.health()
    assert waits == [], "a certificate that does not verify is not tried again"
    msg = str(e.value)
    assert msg.startswith(f"central at {central.url} not trusted: its certificate does not verify (")
    assert "system's CA certificates" in msg and "--ca-file" in msg and "GRIDPILOT_CA_FILE" in msg
    assert isinstance(e.value, CentralUnreachable), "whoever handles an unreachable central handles this one"


def test_another_ca_or_another_host_name_is_not_trusted(tmp_path, central, pki):
    with pytest.raises(CentralUntrusted) as e:
        CentralClient(central.url, central.admin_token, ca_file=str(pki.other_ca)).health()
    assert f"checked against the CA file {pki.other_ca}" in str(e.value)
    with EmbeddedCentral(tmp_path / "elsewhere", certfile=str(pki.other_name_cert),
                         keyfile=str(pki.other_name_key)) as c:
        with pytest.raises(CentralUntrusted) as e:
            CentralClient(c.url, c.admin_token, ca_file=str(pki.ca)).health()
    assert "127.0.0.1" in str(e.value) and "mismatch" in str(e.value).lower()


@pytest.mark.parametrize("what", ["missing", "not PEM", "a directory", "empty"])
def test_a_ca_file_that_cannot_serve_is_one_error_naming_it(tmp_path, central, pki, what):
    path = {"missing": tmp_path / "nope.pem", "not PEM": pki.host_key, "a directory": tmp_path,
            "empty": tmp_path / "empty.pem"}[what]
    if what == "empty":
        path.write_text("")
    with pytest.raises(ConfigError) as e:
        CentralClient(central.url, central.admin_token, ca_file=str(path))
    assert str(e.value).startswith(f"CA file {path}: ")
    assert "\n" not in str(e.value)


def test_plain_http_is_not_upgraded_and_the_ca_is_not_needed(tmp_path, pki):
    with EmbeddedCentral(tmp_path / "plain") as c:
        assert c.url.startswith("http://")
        assert CentralClient(c.url, c.admin_token, ca_file=str(pki.ca)).health()["status"] == "ok"


# -- the user commands ---------------------------------------------------------------------------------------------

def test_user_commands_verify_with_ca_file_or_the_environment(central, pki, tmp_path, clean_env, capsys):
    token = tmp_path / "admin.token"
    token.write_text(central.admin_token)
    conn = ["--url", central.url, "--token-file", str(token)]
    assert main(["jobs", *conn, "--ca-file", str(pki.ca)]) == 0
    capsys.readouterr()
    # Without a CA: one line saying why, no traceback; a configuration to fix (2), not an outage to wait out (10).
    assert main(["jobs", *conn]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gridpilot: central at {central.url} not trusted: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert main(["jobs", *conn, "--ca-file", str(pki.other_ca)]) == 2
    assert f"CA file {pki.other_ca}" in capsys.readouterr().err
    assert main(["jobs", *conn, "--ca-file", str(tmp_path / "nope.pem")]) == 2
    err = capsys.readouterr().err
    assert err == f"gridpilot: CA file {tmp_path / 'nope.pem'}: No such file or directory\n"
    clean_env.setenv("GRIDPILOT_CA_FILE", str(pki.ca))
    assert main(["jobs", *conn]) == 0
    # The flag wins over the environment.
    assert main(["jobs", *conn, "--ca-file", str(pki.other_ca)]) == 2


def _gridpilot(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_central_serve_with_certfile_and_keyfile_writes_an_https_url(tmp_path, pki):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_STATE_DIR"] = str(state)
    assert _gridpilot("central", "init", env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "central", "serve", "--port", "0", "--certfile",
                             str(pki.host_cert), "--keyfile", str(pki.host_key)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url_file = state / "central.url"
        deadline = time.monotonic() + 60
        while not url_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "central.url not written within 60 s"
            time.sleep(0.1)
        url = url_file.read_text().strip()
        assert url.startswith("https://127.0.0.1:")
        # The user commands find it from the state directory and verify it with the CA.
        deadline = time.monotonic() + 60
        while True:
            out = _gridpilot("jobs", "--ca-file", str(pki.ca), env=env)
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        out = _gridpilot("jobs", env=env)
        assert out.returncode == 2 and "not trusted" in out.stderr and "Traceback" not in out.stderr
        # SIGTERM is how a service manager stops it: a clean stop, exit 0 (not death by the signal, 143).
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("case", ["key missing", "only certfile", "key of another certificate", "ca as cert"])
def test_central_serve_refuses_unusable_certificate_files_in_one_line(tmp_path, pki, case):
    args = {
        "key missing": ["--certfile", str(pki.host_cert), "--keyfile", str(tmp_path / "none.key")],
        "only certfile": ["--certfile", str(pki.host_cert)],
        "key of another certificate": ["--certfile", str(pki.host_cert), "--keyfile", str(pki.other_name_key)],
        "ca as cert": ["--certfile", str(pki.ca), "--keyfile", str(pki.host_key)],
    }[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_STATE_DIR"] = str(tmp_path / "state")
    out = _gridpilot("central", "serve", "--port", "0", *args, env=env)
    assert out.returncode == 2, out
    assert out.stderr.startswith("gridpilot: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    named = {"key missing": str(tmp_path / "none.key"), "only certfile": "--keyfile",
             "key of another certificate": str(pki.other_name_key), "ca as cert": str(pki.ca)}[case]
    assert named in out.stderr
    assert not (tmp_path / "state" / "central.url").exists(), "nothing served, nothing announced"


# -- the runner's and the CE's configuration ------------------------------------------------------------------------

def test_the_runner_takes_ca_file_from_its_configuration_and_checks_it(tmp_path, pki):
    cfg = load_config(environ={"GRIDPILOT_CA_FILE": str(pki.ca)})
    assert cfg.ca_file == str(pki.ca)
    with pytest.raises(ConfigError) as e:
        load_config(environ={"GRIDPILOT_CA_FILE": str(tmp_path / "nope.pem")})
    assert str(e.value) == f"field 'ca_file': CA file {tmp_path / 'nope.pem'}: No such file or directory"
    out = _gridpilot("runner", "--ca-file", str(pki.host_key), "--token-file", str(pki.ca),
                     env={k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")})
    assert out.returncode == 2 and f"CA file {pki.host_key}: no PEM CA certificate" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1


def test_the_ce_checks_ca_file_at_its_line_and_hands_it_to_its_pilots(tmp_path, pki, monkeypatch):
    monkeypatch.delenv("GRIDPILOT_CA_FILE", raising=False)
    conf = tmp_path / "ce.yaml"
    conf.write_text(f"backend: local\nca_file: {tmp_path / 'nope.pem'}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(conf)
    assert str(e.value).startswith(f"{conf}:2: field 'ca_file': CA file {tmp_path / 'nope.pem'}: ")
    conf.write_text(f"backend: local\nca_file: {pki.ca}\n")
    assert load_settings(conf).ca_file == str(pki.ca)
    monkeypatch.setenv("GRIDPILOT_CA_FILE", str(pki.ca))
    assert load_settings(None).ca_file == str(pki.ca), "GRIDPILOT_CA_FILE is the default"
    monkeypatch.setenv("GRIDPILOT_CA_FILE", str(tmp_path / "gone.pem"))
    with pytest.raises(ConfigError) as e:
        load_settings(None)
    assert "environment variable GRIDPILOT_CA_FILE: field 'ca_file'" in str(e.value)


def test_a_pilot_the_ce_submits_runs_a_job_to_done_over_https(tmp_path, central, pki):
    """CE (ca_file) -> pilot script (GRIDPILOT_CA_FILE) -> runner -> agent -> wrapper (the CA's text in its
    hand-over): a job whose output the wrapper uploads and registers at central."""
    admin = central.client()
    user = CentralClient(central.url, admin.mint_token("user", "alice"), ca_file=str(pki.ca))
    token_file = tmp_path / "ce.token"
    token_file.write_text(admin.mint_token("ce", "ce1", site=SITE, ce=CE))
    token_file.chmod(0o600)
    env = {"GRIDPILOT_MATCH_BACKOFF": "0.3", "GRIDPILOT_MATCH_BACKOFF_MAX": "1.0",
           "GRIDPILOT_MAX_EMPTY_MATCHES": "3", "GRIDPILOT_HEARTBEAT_INTERVAL": "1.0", "GRIDPILOT_CGROUPS": "off",
           "GRIDPILOT_CONTAINER_RUNTIME": "none", "GRIDPILOT_CLOSE_SE": DEFAULT_SE_NAME}
    s = CESettings(central_url=central.url, token_file=str(token_file), ca_file=str(pki.ca), backend="local",
                   cores=1, memory_mb=500, wall_time=900, install_path=sys.prefix,
                   pilot_dir=str(tmp_path / "pilots"), environment=env, cycle_interval=1.0, startup_grace=30.0)
    jdl = ('Executable = "/bin/sh";\nArguments = "-c \'echo over https > out.txt\'";\nTTL = 300;\n'
           'OutputFile = {"out.txt@disk=1"};\n')
    job_id = user.submit(jdl)
    client = CentralClient(s.central_url, s.token(), ca_file=s.ca_file)
    f = Factory(s, client, make_backend(s, CE), site=SITE, ce=CE)
    try:
        deadline = time.monotonic() + 180
        while True:
            r = f.cycle()
            assert not r.errors, r.errors
            job = user.get_job(job_id)
            if job["state"] in ("DONE", "DONE_WARN") or job["state"].startswith("ERROR") or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        outs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (tmp_path / "pilots").glob("*/pilot.out"))
        trace = "\n".join(e["text"] for e in user.trace(job_id))
        assert job["state"] == "DONE", f"{job['state']}\n{trace}\n{outs}"
        scripts = list((tmp_path / "pilots").glob("*/pilot.sh"))
        assert scripts and f"export GRIDPILOT_CA_FILE={pki.ca}" in scripts[0].read_text()
        lfn = f"{job['output_dir'].rstrip('/')}/out.txt"
        entry = user.lookup_file(lfn)
        (replica,) = entry["replicas"]
        assert Path(replica["pfn"].removeprefix("file://")).read_text() == "over https\n"
    finally:
        f.close()


def test_the_pilot_script_exports_the_ca_file_and_the_site_may_say_where_nodes_keep_it(tmp_path, pki):
    from gridpilot.ce.backend import Resources
    from gridpilot.ce.script import PilotScript

    p = PilotScript(name="p1", central_url="https://central:8765", site=SITE, ce=CE, backend="local",
                    resources=Resources(cores=1, memory_mb=500, wall_s=900), install_path=sys.prefix,
                    token_file=tmp_path / "agent.token", workdir=str(tmp_path / "w"), ca_file=str(pki.ca))
    assert pilot_environment(p)["GRIDPILOT_CA_FILE"] == str(pki.ca)
    import dataclasses

    q = dataclasses.replace(p, environment={"GRIDPILOT_CA_FILE": "/cvmfs/site/ca.pem"})
    assert pilot_environment(q)["GRIDPILOT_CA_FILE"] == "/cvmfs/site/ca.pem"


def test_a_runner_that_does_not_trust_central_stops_at_once_as_a_configuration_error(tmp_path, central, pki):
    """Not the start-up window's wait for an outage (10): the CA bundle does not fit, which waiting cannot change."""
    token = tmp_path / "agent.token"
    token.write_text(central.client().mint_token("agent", "pilot-1", site=SITE, ce=CE))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    args = ["runner", "--central-url", central.url, "--token-file", str(token), "--close-se", DEFAULT_SE_NAME,
            "--workdir", str(tmp_path / "work"), "--startup-window", "600", "--cgroups", "off"]
    out = _gridpilot(*args, "--ca-file", str(pki.other_ca), env=env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "not trusted" in out.stderr and f"CA file {pki.other_ca}" in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
