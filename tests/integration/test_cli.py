"""The `gridpilot` command as a user runs it."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import List, Tuple

import psutil
import urllib3

import gridpilot
from gridpilot.demo import EXAMPLES
from support import leaks


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gridpilot {gridpilot.__version__}"
    assert gridpilot.__version__ != "0.0.0+unknown"


def test_no_command_prints_help_and_fails():
    out = run()
    assert out.returncode == 2
    assert "usage: gridpilot" in out.stdout


def test_unknown_command_is_an_error():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def run_demo(*args: str, timeout: float) -> Tuple[subprocess.CompletedProcess, int]:
    """`gridpilot demo ...` as run(), and its pid: the batch ids of the demo's local pilots start with it."""
    with subprocess.Popen([sys.executable, "-m", "gridpilot", "demo", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), proc.pid


def pilot_processes(demo_pid: int) -> List[str]:
    """Processes of the demo's pilots (script, runner, agent, wrapper, payload): they carry its batch ids."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("GRIDPILOT_BATCH_ID", "").startswith(
                    f"local:{demo_pid}."):
                found.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.Error:
            continue
    return found


def test_demo_runs_every_example_to_its_expected_state():
    started = time.time()
    out, pid = run_demo("--json", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {j["name"]: j for j in jobs}
    assert by_name["hello"]["state"] == "DONE"
    assert by_name["multicore"]["state"] == "DONE"
    assert by_name["analysis"]["state"] == "DONE"
    assert by_name["validation_fails"]["state"] == "ERROR_V"
    assert (by_name["ttl_exceeded"]["state"], by_name["ttl_exceeded"]["kill_reason"]) == ("ERROR_E", "TTL")
    assert "every job ended as expected" in out.stderr
    # Every job ran in a pilot the demo's CE forked: its trace names that pilot's local batch job.
    batch = re.compile(rf"local:{pid}\.(\d+)")
    assert all(batch.fullmatch(j["batch_job"] or "") for j in jobs), jobs
    # The CE offered a 1-core and a 2-core pilot shape: the multicore example needs 2 cores.
    assert "pilot shapes: 1c/" in out.stderr and ", 2c/" in out.stderr, out.stderr
    m = re.search(r"CE submitted (\d+) pilot\(s\) \(([^)]*)\): (\d+) finished, (\d+) failed, (.*?)none left running",
                  out.stderr)
    assert m, out.stderr
    submitted = set(m.group(2).split(", "))
    assert len(submitted) == int(m.group(1)) >= 2
    assert {j["batch_job"] for j in jobs} <= submitted
    assert (int(m.group(3)), int(m.group(4))) == (len(submitted), 0), "every pilot should exit 0"
    assert "removed" not in m.group(5), "pilots should end on their own, not be removed by the CE"
    # The demo never leaves a process behind: no process of its pilots...
    assert pilot_processes(pid) == []
    # ...and no agent or wrapper of this checkout's interpreter started since the demo did (other checkouts on the
    # machine may be running pilots of their own; an earlier module's leftovers are that module's failure, conftest).
    assert leaks.pilot_processes(since=started) == []


def test_demo_runs_a_given_jdl_with_a_local_executable(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho ran with $ALIEN_PROC_ID > out.txt\n")
    script.chmod(0o755)
    jdl = tmp_path / "mine.jdl"
    jdl.write_text('Executable = "job.sh";\nTTL = 60;\nOutputFile = { "out.txt@disk=1" };\n')
    out, pid = run_demo("--json", str(jdl), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert job["state"] == "DONE" and job["exit_code"] == 0
    assert re.fullmatch(rf"local:{pid}\.\d+", job["batch_job"]), job
    assert pilot_processes(pid) == []


def test_demo_serve_keeps_the_web_view_up_until_sigterm(tmp_path):
    """`gridpilot demo --serve`: after its jobs ended the demo's central stays up with its web view, whose sign-in
    takes the token of the file the demo names; SIGTERM ends it with the demo's own exit code, nothing left."""
    jdl = EXAMPLES / "hello.jdl"
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "demo", "--serve", str(jdl)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore
    seen: List[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving the web view") for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen) + proc.stderr.read()
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        (where,) = [re.match(r"web view: (\S+)/ui/ \(sign in with the token in ([^;)]+)", line) for line in seen
                    if line.startswith("web view: ")]
        assert where, seen
        url, token = where.group(1), Path(where.group(2)).read_text().strip()
        assert Path(where.group(2)).stat().st_mode & 0o077 == 0
        http = urllib3.PoolManager()
        form = http.request("GET", f"{url}/ui/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.data.decode()).group(1)  # type: ignore[union-attr]
        cookie = form.headers["set-cookie"].split(";")[0]
        signed = http.request("POST", f"{url}/ui/signin", redirect=False, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
            body=urllib.parse.urlencode({"token": token, "csrf": csrf, "next": "/ui/jobs"}))
        assert signed.status == 303, signed.data.decode()
        session = "; ".join(c.split(";")[0] for c in signed.headers.getlist("set-cookie"))
        page = http.request("GET", f"{url}/ui/jobs", headers={"Cookie": session})
        assert page.status == 200 and "hello.jdl" in page.data.decode(), page.data.decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert pilot_processes(proc.pid) == []
