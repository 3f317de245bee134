"""`--json` on every command that prints (issue 19): the flags added to commands that had none, or ignored it in one
of their modes, each parsed here. The commands that had it already are tested with their own (test_central_cli,
test_central_why, test_jdl_cli, test_tokens)."""

from __future__ import annotations

import time

import orjson
import pytest
from support.central import jdl, start_world

from gridpilot import cli_codes
from gridpilot.cli import main
from gridpilot.testing import LocalGrid


@pytest.fixture
def world(tmp_path, monkeypatch):
    for name in ("GRIDPILOT_TOKEN", "GRIDPILOT_TOKEN_FILE", "GRIDPILOT_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRIDPILOT_STATE_DIR", str(tmp_path / "no-state"))
    for w in start_world(tmp_path / "state", None):
        monkeypatch.setenv("GRIDPILOT_CENTRAL_URL", w.url)
        monkeypatch.setenv("GRIDPILOT_TOKEN", w.embedded.admin_token)
        yield w


def test_submit_wait_and_trace_follow_print_json(tmp_path, capsys, monkeypatch):
    """`submit --wait --json` prints nothing while the job runs, then the job as `job --json` does (exit 0 for DONE);
    `trace --follow --json` prints one record per line (JSON Lines) until the job ends; a --timeout that runs out
    prints the job as it is (exit 3)."""
    with LocalGrid(tmp_path / "grid") as grid:
        monkeypatch.setenv("GRIDPILOT_CENTRAL_URL", grid.central.url)
        monkeypatch.setenv("GRIDPILOT_TOKEN", grid.user_token)
        monkeypatch.setenv("GRIDPILOT_STATE_DIR", str(tmp_path / "no-state"))
        (tmp_path / "ok.jdl").write_text(jdl("/bin/sh", Arguments="-c 'echo hi'", TTL=60))
        (tmp_path / "never.jdl").write_text(jdl(TTL=60, CPUCores=64))  # no slot here has 64 cores
        grid.start_runner()
        assert main(["submit", str(tmp_path / "ok.jdl"), "--wait", "--json", "--interval", "0.3"]) == cli_codes.OK
        job = orjson.loads(capsys.readouterr().out)
        assert job["state"] == "DONE" and isinstance(job["id"], int) and job["exit_code"] == 0

        assert main(["trace", str(job["id"]), "--follow", "--json"]) == cli_codes.OK
        records = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert records and all({"ts", "category", "text"} <= set(r) for r in records)
        assert [r["text"] for r in records] == [e["text"] for e in grid.user.trace(job["id"])]
        assert main(["trace", str(job["id"]), "--follow", "--json", "--category", "state"]) == cli_codes.OK
        states = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert states and {r["category"] for r in states} == {"state"} and "DONE" in states[-1]["text"]

        t0 = time.monotonic()
        code = main(["submit", str(tmp_path / "never.jdl"), "--wait", "--json", "--timeout", "1",
                     "--interval", "0.2"])
        assert code == cli_codes.TIMEOUT and time.monotonic() - t0 < 60
        waiting = orjson.loads(capsys.readouterr().out)
        assert waiting["state"] == "WAITING" and waiting["cores"] == 64
        grid.user.kill(waiting["id"])
        assert main(["trace", str(waiting["id"]), "--follow", "--json"]) == cli_codes.FAILED  # ended KILLED
        assert "KILLED" in orjson.loads(capsys.readouterr().out.splitlines()[-1])["text"]


def test_area_grant_and_revoke_print_json(world, capsys):
    assert main(["area", "grant", "alice", "/alice/data", "--json"]) == 0
    granted = orjson.loads(capsys.readouterr().out)
    assert (granted["user"], granted["path"]) == ("alice", "/alice/data")
    assert main(["area", "grant", "alice", "/alice/data", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out).get("already") is True
    assert main(["area", "revoke", "alice", "/alice/data", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["revoked"] is True
    assert main(["area", "revoke", "alice", "/alice/data", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["revoked"] is False


def test_central_init_token_and_keys_print_json(tmp_path, capsys, monkeypatch):
    for name in ("GRIDPILOT_DB_URL", "GRIDPILOT_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    state = ["--state-dir", str(tmp_path / "central")]
    assert main(["central", "init", "--json", *state]) == 0
    made = orjson.loads(capsys.readouterr().out)
    assert made["key_made"] is True and made["applied"] and "admin_token" not in made
    assert made["token_file"] == str(tmp_path / "central" / "admin.token") and made["storage_elements"]
    assert main(["central", "init", "--json", "--print-token", *state]) == 0
    again = orjson.loads(capsys.readouterr().out)
    assert again["applied"] == [] and again["key_made"] is False and again["kid"] == made["kid"]
    assert again["admin_token"].count(".") == 2, "a JWT"
    assert main(["central", "token", "--role", "user", "--subject", "alice", "--json", *state]) == 0
    minted = orjson.loads(capsys.readouterr().out)
    assert (minted["role"], minted["subject"]) == ("user", "alice") and minted["token"].count(".") == 2
    out = tmp_path / "ce.token"
    assert main(["central", "token", "--role", "ce", "--subject", "ce1", "--site", "S", "--ce", "S::CE", "-o", str(out),
                 "--json", *state]) == 0
    written = capsys.readouterr()
    assert orjson.loads(written.out) == {"file": str(out), "role": "ce", "subject": "ce1", "site": "S", "ce": "S::CE"}
    assert "token" not in orjson.loads(written.out) and out.read_text().count(".") == 2 and written.err == ""
    assert main(["central", "keys", "list", "--json", *state]) == 0
    (first,) = orjson.loads(capsys.readouterr().out)["keys"]
    assert main(["central", "keys", "rotate", "--retire-after", "1h", "--json", *state]) == 0
    rotated = orjson.loads(capsys.readouterr().out)
    assert rotated["kid"] != first["kid"] and [k["kid"] for k in rotated["retiring"]] == [first["kid"]]
    assert rotated["retiring"][0]["retire_at"] > time.time() + 3000
    assert main(["central", "keys", "retire", first["kid"], "--json", *state]) == 0
    retired = orjson.loads(capsys.readouterr().out)
    assert retired["kid"] == first["kid"] and retired["retire_at"] <= time.time()
    assert main(["central", "keys", "list", "--json", *state]) == 0
    accepted = {k["kid"]: k["accepted"] for k in orjson.loads(capsys.readouterr().out)["keys"]}
    assert accepted == {first["kid"]: False, rotated["kid"]: True}


def test_node_and_jdl_show_take_json(tmp_path, capsys):
    """Their output is JSON anyway; --json is taken so that a script may pass it to every command."""
    assert main(["node", "--json"]) == 0
    assert set(orjson.loads(capsys.readouterr().out)) >= {"cpu", "gpus"}
    (tmp_path / "j.jdl").write_text(jdl(TTL=77))
    assert main(["jdl", "show", str(tmp_path / "j.jdl"), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["ttl"] == 77
