"""The full trace of a real job, as `gridpilot trace` prints it, reads as an ALICE (JAliEn) trace: compared line by
line, in order, with tests/fixtures/traces/alice_job.template. The job runs through a real central, runner, JobAgent
and JobWrapper (gridpilot.testing.LocalGrid, tests/support/pilot.py), with an input file to stage in and an output
file to upload and register, so every kind of line a plain job has is there; `--json` gives the same texts, and
`--category` keeps only the lines asked for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import orjson
from support.paths import FIXTURES
from support.pilot import Pilot
from support.trace_template import literal, load, mismatch

import gridpilot
from gridpilot.testing import SE_NAME

TEMPLATE = FIXTURES / "traces" / "alice_job.template"
INPUT_LFN = "/gridpilot/test/alice-trace/input.txt"
#: 5.915 KB, the size of the sample trace's validation.sh, in JAliEn's format.
INPUT_SIZE = 6057


def _host_os() -> str:
    """PRETTY_NAME of this host's os-release (the payload runs here, without a container): read independently of
    the pilot's own reader."""
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        m = re.search(r'^PRETTY_NAME=(["\']?)(.*)\1\s*$', text, re.M)
        if m:
            return m.group(2)
    return "unknown"


def _cli(pilot: Pilot, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_TOKEN"] = pilot.grid.user_token
    out = subprocess.run([sys.executable, "-m", "gridpilot", "trace", *args, "--url", pilot.grid.central.url],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_real_jobs_trace_reads_as_alices(pilot: Pilot, tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(b"gridpilot\n" * (INPUT_SIZE // 10) + b"x" * (INPUT_SIZE % 10))
    pilot.grid.register_local_file(source, INPUT_LFN)
    job_id = pilot.submit(
        'Executable = "/bin/sh";\n'
        "Arguments = \"-c 'sleep 1; cat input.txt > result.txt'\";\n"
        f'InputFile = {{"LF:{INPUT_LFN}"}};\n'
        'OutputFile = {"result.txt@disk=1"};\n'
        'MemorySize = "2048MB";\n'
        "TTL = 300;\n")
    # No container: which runtime a host has would change the lines; the container lines have tests of their own.
    pilot.start(container_runtime="none", max_empty_matches=1)
    (job,) = pilot.wait_final([job_id], timeout=120)
    assert job["state"] == "DONE", pilot.describe(job_id)

    node = os.uname().nodename
    values = literal({
        "USER": pilot.grid.user.whoami()["subject"], "SITE": "LOCAL", "CE": "LOCAL::CE", "NODE": node,
        "AGENT": f"pilot@{node}", "VERSION": gridpilot.__version__, "WORKDIR": str(pilot.workroot / f"alien-job-{job_id}"),
        "INPUT_LFN": INPUT_LFN, "OUTPUT_DIR": job["output_dir"], "OS": _host_os(), "SE": SE_NAME,
        "SIZE": str(INPUT_SIZE),
    })
    values["SANDBOX_NOTE"] = r"(?:cgroup limits|job cgroup|no job cgroup|controllers not handed down)\b.*"
    values["NOPIDNS"] = r"No PID namespace for the JobWrapper: .*"
    rendered = _cli(pilot, str(job_id), "--utc").splitlines()
    problem = mismatch(load(TEMPLATE, values), rendered)
    assert problem is None, problem + "\n--- the trace:\n" + "\n".join(rendered)

    # --json: the same records, structured, with the same texts.
    records: List[dict] = orjson.loads(_cli(pilot, str(job_id), "--json"))
    assert [f"[{r['category']} ]: {r['text']}" for r in records] == [line.split(" ", 3)[3] for line in rendered]
    # --category keeps only those lines, in the same form.
    states = _cli(pilot, str(job_id), "--utc", "--category", "state").splitlines()
    assert states == [line for line in rendered if " [state ]: " in line]
    assert [s.split(": ", 1)[1] for s in states] == [
        f"WAITING: submitted by {pilot.grid.user.whoami()['subject']}", "Job ASSIGNED to: LOCAL",
        "Job state transition from ASSIGNED to STARTED", "Job state transition from STARTED to RUNNING",
        "Job state transition from RUNNING to SAVING", "Job state transition from SAVING to DONE"]
    # --follow prints the same lines (of the categories asked for) and how the job ended.
    followed = _cli(pilot, str(job_id), "--utc", "--follow", "--category", "state", "--category", "proc").splitlines()
    assert followed[:-1] == [line for line in rendered if " [state ]: " in line or " [proc ]: " in line]
    assert followed[-1] == f"job {job_id} ended DONE (exit code 0)"
    pilot.assert_clean()
