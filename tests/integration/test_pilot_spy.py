"""`gridpilot spy` end to end: a real runner, agent, wrapper and a payload printing slowly, against a real central
(SQLite); the CLI as a user runs it. And a hostile payload that turns its stdout into a symbolic link to a secret
and its stderr into a FIFO: the pilot refuses both with the reason, does not block, and goes on answering."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import orjson
from support.pilot import STOPPED_OR_DONE, Pilot, _jdl_value

from gridpilot import cli_codes

PAYLOAD = Path(__file__).parents[1] / "support" / "spy_payload.py"


def spy_jdl(*args: str) -> str:
    return "\n".join([f'Executable = "{sys.executable}";', f"Arguments = {_jdl_value(' '.join([str(PAYLOAD), *args]))};",
                      "TTL = 300;", "ForcedKillTimeout = 2;"]) + "\n"


def cli(pilot: Pilot, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    token = pilot.grid.state_dir / "user.token"
    token.write_text(pilot.grid.user_token)
    return subprocess.run([sys.executable, "-m", "gridpilot", *args, "--url", pilot.grid.central.url, "--token-file",
                           str(token)], capture_output=True, text=True, timeout=timeout)


def numbers(text: str, prefix: str) -> List[int]:
    got = [int(m.group(1)) for m in re.finditer(rf"^{prefix} (\d+)$", text, re.M)]
    assert len(got) == len(text.splitlines()), f"only `{prefix} N` lines expected:\n{text}"
    return got


def wait_output(pilot: Pilot, job_id: int, at_least: int) -> None:
    """Until the payload has printed `at_least` lines (seen through spy itself)."""
    deadline = time.monotonic() + 60
    while True:
        out = cli(pilot, "spy", str(job_id), "--lines", "1")
        if out.returncode == 0 and numbers(out.stdout, "out") and numbers(out.stdout, "out")[-1] >= at_least:
            return
        assert time.monotonic() < deadline, (out, pilot.describe(job_id))
        time.sleep(0.5)


def test_spy_shows_a_running_jobs_output_and_follows_it(pilot: Pilot):
    # The requests reach the agent with its control poll (every second here); heartbeats are far apart.
    job_id = pilot.submit(spy_jdl("lines", "0.1"))
    pilot.start(cores=1, heartbeat_interval=60.0, kill_poll_interval=1.0)
    pilot.wait_state(job_id, ["RUNNING"])
    wait_output(pilot, job_id, 10)

    t0 = time.monotonic()
    out = cli(pilot, "spy", str(job_id), "--lines", "5")
    took = time.monotonic() - t0
    assert out.returncode == cli_codes.OK, out
    got = numbers(out.stdout, "out")
    # The last 5 lines printed so far: consecutive, the newest ones.
    assert len(got) == 5 and got == list(range(got[0], got[0] + 5)) and got[0] >= 6, out.stdout
    assert took < 15, f"an answer within a control poll or two, took {took:.1f} s"

    out = cli(pilot, "spy", str(job_id), "stderr", "-n", "3")
    assert out.returncode == cli_codes.OK, out
    assert len(numbers(out.stdout, "err")) == 3

    out = cli(pilot, "spy", str(job_id), "workdir", "--json")
    assert out.returncode == cli_codes.OK, out
    entries = {e["name"]: e for e in orjson.loads(out.stdout)["answer"]["entries"]}
    assert entries["stdout"]["type"] == "file" and entries["stdout"]["size"] > 0
    assert entries["stderr"]["type"] == "file" and entries["tmp"]["type"] == "dir"
    assert abs(entries["stdout"]["mtime"] - time.time()) < 60
    out = cli(pilot, "spy", str(job_id), "workdir")
    assert re.search(r"^\s+\d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  stdout$", out.stdout, re.M), out.stdout
    assert re.search(r"  tmp/$", out.stdout, re.M), out.stdout

    # --follow: the last lines, then only the new ones, whole, none twice, none missed, until the job ends.
    token = pilot.grid.state_dir / "user.token"
    follow = subprocess.Popen([sys.executable, "-m", "gridpilot", "spy", str(job_id), "--follow", "--lines", "2",
                               "--interval", "0.5", "--url", pilot.grid.central.url, "--token-file", str(token)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen: List[int] = []
        deadline = time.monotonic() + 90
        while len(seen) < 40:
            line = follow.stdout.readline()
            assert line and time.monotonic() < deadline, (seen, follow.poll())
            seen.extend(numbers(line, "out"))
        assert seen == list(range(seen[0], seen[0] + len(seen))), seen
        assert pilot.grid.user.kill(job_id)["kill_requested"]
        rest, err = follow.communicate(timeout=90)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    more = numbers(rest, "out")
    assert seen + more == list(range(seen[0], seen[0] + len(seen) + len(more)))
    assert follow.returncode == cli_codes.OK, err
    assert f"job {job_id} is KILLED: no more output to follow" in err or "no more output to follow" in err, err

    (job,) = pilot.wait_final([job_id])
    assert job["state"] == "KILLED"
    # An ended job: one line, FAILED, and nothing stored.
    out = cli(pilot, "spy", str(job_id))
    assert out.returncode == cli_codes.FAILED, out
    assert f"job {job_id} is KILLED" in out.stderr and out.stderr.count("\n") == 1
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_a_hostile_payload_cannot_make_spy_show_another_file_or_block_the_agent(pilot: Pilot, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the agent's secret\n")
    # Heartbeats every second carry the requests here (FAST: no control poll).
    job_id = pilot.submit(spy_jdl("hostile", str(secret)))
    pilot.start(cores=1)
    pilot.wait_state(job_id, ["RUNNING"])
    deadline = time.monotonic() + 60
    while True:
        out = cli(pilot, "spy", str(job_id), "workdir", "--json")
        types = {e["name"]: e["type"] for e in orjson.loads(out.stdout)["answer"]["entries"]} if out.stdout else {}
        if types.get("stdout") == "link" and types.get("stderr") == "other":
            break
        assert time.monotonic() < deadline, (out, pilot.describe(job_id))
        time.sleep(0.5)

    out = cli(pilot, "spy", str(job_id))
    assert out.returncode == cli_codes.FAILED, out
    assert "stdout is a symbolic link: not followed" in out.stderr and "secret" not in out.stdout + out.stderr
    t0 = time.monotonic()
    out = cli(pilot, "spy", str(job_id), "stderr", "--json")
    assert out.returncode == cli_codes.FAILED, out
    assert orjson.loads(out.stdout)["answer"] == {"refused": "stderr is a FIFO, not a regular file: not read"}
    assert time.monotonic() - t0 < 30
    # The agent did not block on the FIFO, nor die: it answers again and the job runs on, watched.
    out = cli(pilot, "spy", str(job_id), "workdir")
    assert out.returncode == cli_codes.OK and "stdout@" in out.stdout, out
    assert pilot.job(job_id)["state"] == "RUNNING"
    pilot.grid.user.kill(job_id)
    (job,) = pilot.wait_final([job_id])
    assert job["state"] == "KILLED", pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()
