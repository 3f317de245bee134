"""`gridpilot central init|token`, `submit [--wait]`, `jobs`, `job`, `trace`, `kill` as a user runs them."""

from __future__ import annotations

import os
import re
import stat
import threading
import time

import orjson
import pytest
from support.central import jdl, site_map, start_world

from gridpilot.central import migrations
from gridpilot.cli import main
from gridpilot.client import CentralClient


@pytest.fixture
def world(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("GRIDPILOT_STATE_DIR", str(state))
    for var in ("GRIDPILOT_TOKEN", "GRIDPILOT_TOKEN_FILE", "GRIDPILOT_CENTRAL_URL", "GRIDPILOT_DB_URL"):
        monkeypatch.delenv(var, raising=False)
    for w in start_world(state, None):
        monkeypatch.setenv("GRIDPILOT_CENTRAL_URL", w.url)
        yield w


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_central_init_writes_a_private_admin_token(tmp_path, capsys):
    state = tmp_path / "fresh"
    assert main(["central", "init", "--state-dir", str(state), "--se", "ALICE::CERN::EOS=root://eos//alice"]) == 0
    out, err = capsys.readouterr()
    token_file = state / "admin.token"
    assert out == "", "the admin token is printed only when asked"
    assert f"admin token written to {token_file} (mode 0600); not printed (--print-token prints it)" in err
    assert token_file.read_text().startswith("ey")
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    steps = [s.version for s in migrations.STEPS]
    assert f"schema steps applied now: {steps}" in err and "ALICE::CERN::EOS" in err
    assert main(["central", "init", "--state-dir", str(state), "--print-token"]) == 0
    out, err = capsys.readouterr()
    assert "applied now: none" in err, "a second init upgrades nothing"
    assert out.strip() == token_file.read_text().strip(), "--print-token prints the token it wrote"
    before = token_file.read_text()
    assert main(["central", "init", "--state-dir", str(state), "--no-token-file"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().startswith("ey") and out.strip() != before.strip(), "--no-token-file prints the new token"
    assert token_file.read_text() == before and "written" not in err
    assert main(["central", "token", "--state-dir", str(state), "--role", "agent", "--subject", "p1",
                 "--site", "S", "--ce", "C", "-o", str(tmp_path / "agent.token")]) == 0
    assert stat.S_IMODE(os.stat(tmp_path / "agent.token").st_mode) == 0o600
    assert main(["central", "token", "--state-dir", str(state), "--role", "agent", "--subject", "p1"]) == 2
    assert "site and a CE" in capsys.readouterr().err
    assert main(["central", "token", "--state-dir", str(tmp_path / "nothing"), "--role", "user",
                 "--subject", "u"]) == 2


def test_submit_of_a_split_jdl_says_it_made_a_masterjob_and_how_many_subjobs(world, tmp_path, capsys):
    f = write(tmp_path, "mc.jdl", 'Executable = "/bin/true";\nSplit = "production:1-3";\nTTL = 60;\n')
    assert main(["submit", f]) == 0
    assert capsys.readouterr().out.strip() == f"submitted masterjob 1 ({f}): 3 subjobs"
    assert main(["masterjob", "1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["subjobs"] == 3, "the count is central's"
    assert main(["submit", f, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"id": 5, "state": "SPLIT", "subjobs": 3, "first_subjob": 6,
                                                     "last_subjob": 8, "split": "production:1-3"}
    one = write(tmp_path, "one.jdl", 'Executable = "/bin/true";\nSplit = "production:7-7";\nTTL = 60;\n')
    assert main(["submit", one]) == 0
    assert capsys.readouterr().out.strip() == f"submitted masterjob 9 ({one}): 1 subjob"


def test_submit_list_show_trace_kill(world, tmp_path, capsys):
    f = write(tmp_path, "hello.jdl", jdl(TTL=600))
    assert main(["submit", f]) == 0
    assert capsys.readouterr().out.strip() == f"submitted job 1 ({f})"
    assert main(["submit", f, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"id": 2, "state": "WAITING"}
    assert main(["jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "USER", "NAME", "STATE", "SITE", "NODE", "RESUB", "UPDATED"]
    assert [ln.split()[:4] for ln in lines[1:]] == [["2", "admin", "hello.jdl", "WAITING"],
                                                    ["1", "admin", "hello.jdl", "WAITING"]]
    assert main(["jobs", "--state", "RUNNING"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "no jobs" in err
    assert main(["job", "1", "--jdl"]) == 0
    out = capsys.readouterr().out
    assert "state           WAITING" in out and 'Executable = "/bin/true";' in out
    assert main(["job", "1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["id"] == 1
    assert main(["trace", "1", "--utc"]) == 0
    assert re.fullmatch(r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \[state \]: WAITING: submitted by admin from hello\.jdl\n",
                        capsys.readouterr().out)
    assert main(["kill", "1", "99"]) == 1
    out, err = capsys.readouterr()
    assert "job 1 KILLED" in out and "job 99: no job 99" in err
    assert main(["job", "99"]) == 1
    assert "central refused (404 job_not_found): no job 99" in capsys.readouterr().err


def test_submit_refuses_invalid_jdl_before_sending_it(world, tmp_path, capsys):
    f = write(tmp_path, "bad.jdl", 'Executable = "/bin/true";\nTTL = ;\n')
    assert main(["submit", f]) == 2
    assert capsys.readouterr().err.strip() == f"gridpilot: {f}:2:7: expected a value for 'TTL', found ';'"
    assert world.admin.list_jobs() == []
    assert main(["submit", str(tmp_path / "missing.jdl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_submit_warns_of_unknown_attributes_and_still_submits(world, tmp_path, capsys):
    """As `jdl check` warns (on stderr, so `--json` stays one JSON object): ALICE submits such a JDL too."""
    f = write(tmp_path, "typo.jdl", 'Executable = "/bin/true";\nTLL = 600;\n')
    assert main(["submit", f, "--json"]) == 0
    out, err = capsys.readouterr()
    assert orjson.loads(out) == {"id": 1, "state": "WAITING"}
    assert err == f"{f}:2:1: warning: unknown attribute 'TLL' (did you mean 'TTL'?)\n"
    assert "TLL = 600;" in world.admin.get_job(1)["jdl"]


def test_submit_wait_follows_the_job_to_its_end(world, tmp_path, capsys):
    f = write(tmp_path, "wait.jdl", jdl(TTL=600))
    agent = world.agent()

    def pilot():
        job = None
        while job is None:
            job = agent.match(site_map())
            time.sleep(0.05)
        for s in ("STARTED", "RUNNING", "SAVING"):
            agent.set_status(job["id"], s, 0)
            time.sleep(0.1)
        agent.append_trace(job["id"], [{"category": "trace", "text": "payload said hello"}])
        agent.set_status(job["id"], "DONE", 0, exit_code=0)

    t = threading.Thread(target=pilot)
    t.start()
    rc = main(["submit", f, "--wait", "--interval", "0.05", "--timeout", "60"])
    t.join()
    out = capsys.readouterr().out
    assert rc == 0, out
    for text in ("submitted job 1", "[state ]: Job ASSIGNED to: ", "[trace ]: ASSIGNED to agent agent1",
                 "[state ]: Job state transition from STARTED to RUNNING", "payload said hello",
                 "[trace ]: DONE: reported by agent 'agent1', exit code 0", "job 1 ended DONE (exit code 0)"):
        assert text in out, text


def test_wait_exit_status_for_a_failed_job_and_token_from_env(world, tmp_path, capsys, monkeypatch):
    user_token = world.admin.mint_token("user", "alice")
    monkeypatch.setenv("GRIDPILOT_TOKEN", user_token)
    f = write(tmp_path, "fail.jdl", jdl(TTL=600))
    assert main(["submit", f]) == 0
    capsys.readouterr()
    agent = world.agent()
    job = agent.match(site_map())
    for s in ("STARTED", "RUNNING"):
        agent.set_status(job["id"], s, 0)
    agent.set_status(job["id"], "ERROR_E", 0, kill_reason="MEMORY_USAGE", exit_code=137)
    assert main(["trace", str(job["id"]), "--follow", "--interval", "0.05"]) == 1
    assert "ended ERROR_E (exit code 137, kill reason MEMORY_USAGE)" in capsys.readouterr().out
    assert main(["jobs", "--user", "bob"]) == 1
    assert "403 forbidden" in capsys.readouterr().err


def test_unreachable_central_and_missing_token(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRIDPILOT_STATE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("GRIDPILOT_TOKEN", raising=False)
    monkeypatch.delenv("GRIDPILOT_TOKEN_FILE", raising=False)
    assert main(["jobs", "--url", "http://127.0.0.1:9"]) == 2
    assert "no token" in capsys.readouterr().err
    monkeypatch.setenv("GRIDPILOT_TOKEN", "x")
    assert main(["jobs", "--url", "http://127.0.0.1:9"]) == 10
    assert "unreachable" in capsys.readouterr().err


def test_url_from_the_state_directory(tmp_path, monkeypatch):
    from gridpilot import console

    state = tmp_path / "s"
    state.mkdir()
    (state / "central.url").write_text("http://127.0.0.1:4321\n")
    monkeypatch.delenv("GRIDPILOT_CENTRAL_URL", raising=False)
    args = type("A", (), {"url": None, "state_dir": str(state)})()
    assert console.resolve_url(args) == "http://127.0.0.1:4321"
    assert isinstance(CentralClient(console.resolve_url(args), "t"), CentralClient)


def test_live_panel_renders(world):
    import io

    from rich.console import Console

    from gridpilot import console

    jid = world.admin.submit(jdl(), name="panel.jdl")
    job = world.agent().match(site_map())
    world.admin.kill(jid)
    got = world.admin.get_job(jid)
    got["resources"] = {"cpu_time_s": 3.5, "rss_bytes": 200 << 20, "nprocs": 3, "nthreads": 9,
                        "read_bytes": 20 << 20, "write_bytes": 30 << 20, "io_source": "/proc/<pid>/io",
                        "net_rx_bytes": 5 << 20, "net_tx_bytes": 6 << 20,
                        "gpus": [{"pci_address": "0000:41:00.0", "util_percent": 64.0, "memory_used_bytes": 3 << 30},
                                 {"pci_address": "0000:42:00.0", "error": "NVML: Not Found"}]}
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(console._panel(got, world.admin.trace(jid), time.monotonic()))
    text = out.getvalue()
    for part in (f"job {job['id']}  panel.jdl", "ASSIGNED", "GRIDPILOT::TEST", "rss=200 MiB", "kill requested",
                 "submitted by admin", "processes=3  threads=9", "read=20 MiB  write=30 MiB (/proc/<pid>/io)",
                 "net rx=5 MiB tx=6 MiB", "0000:41:00.0 64% 3072 MiB  0000:42:00.0 unread",
                 # The categories as JAliEn prints them: brackets rich must not take for its markup.
                 "[state ]:", "Job ASSIGNED to: ", "[trace ]:"):
        assert part in text, part


def test_area_grant_list_revoke(world, tmp_path, capsys, monkeypatch):
    """`gridpilot area`: an admin grants a user a catalogue area for its jobs' OutputDir, lists and revokes it."""
    assert main(["area", "grant", "alice", "/alice/data/"]) == 0
    assert capsys.readouterr().out.strip() == "alice may write in /alice/data"
    assert main(["area", "grant", "alice", "/alice/data"]) == 0
    assert "(granted before)" in capsys.readouterr().out
    assert main(["area", "list", "--user", "alice"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["alice", "/gridpilot/user/a/alice", "own area"]
    assert lines[1].split("\t")[:2] == ["alice", "/alice/data"] and "granted by admin" in lines[1]
    assert main(["area", "list", "--json"]) == 0
    assert [a["path"] for a in orjson.loads(capsys.readouterr().out)["areas"]] == ["/alice/data"]
    monkeypatch.setenv("GRIDPILOT_TOKEN", world.admin.mint_token("user", "alice"))
    assert main(["submit", write(tmp_path, "d.jdl", jdl(OutputDir="/alice/data/run1"))]) == 0
    capsys.readouterr()
    assert main(["area", "grant", "alice", "/"]) == 1
    assert "central refused (403 insufficient_scope)" in capsys.readouterr().err
    assert main(["submit", write(tmp_path, "b.jdl", jdl(OutputDir="/gridpilot/user/b/bob"))]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "OutputDir /gridpilot/user/b/bob is outside alice's areas" in err
    monkeypatch.delenv("GRIDPILOT_TOKEN")
    assert main(["area", "revoke", "alice", "/alice/data"]) == 0
    assert capsys.readouterr().out.strip() == "alice: grant of /alice/data revoked"
    assert main(["area", "grant", "alice", "relative"]) == 1
    assert "path must be an absolute path" in capsys.readouterr().err


def test_serve_refuses_a_bad_user_area_in_one_line(tmp_path, capsys):
    assert main(["central", "serve", "--state-dir", str(tmp_path / "s"), "--user-area", "/x/{home}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("gridpilot: --user-area: user_area '/x/{home}'")
    assert not (tmp_path / "s").exists(), "refused before anything was made"
