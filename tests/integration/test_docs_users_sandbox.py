"""docs/users.md's section "Your own script and files": its ```sh blocks, in page order, in one `bash` with
`set -euo pipefail`, in a fresh directory, against a LocalGrid whose pilot runs the jobs (the page's convention:
GRIDPILOT_CENTRAL_URL and a user's GRIDPILOT_TOKEN_FILE in the environment, `gridpilot` on PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.pilot import Pilot
from support.paths import ROOT

from gridpilot.private_files import write_private

PAGE = ROOT / "docs" / "users.md"
SECTION = "## Your own script and files"
_FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def section_blocks() -> list[str]:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return _FENCE.findall(text[start:] if end < 0 else text[start:end])


def test_the_sandbox_sections_commands_run(pilot: Pilot, tmp_path):
    blocks = section_blocks()
    assert len(blocks) >= 3, "the section shows submitting, a refusal and the arguments"
    token = tmp_path / "user.token"
    write_private(token, pilot.grid.user_token + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(GRIDPILOT_CENTRAL_URL=pilot.grid.central.url, GRIDPILOT_TOKEN_FILE=str(token),
               GRIDPILOT_STATE_DIR=str(tmp_path / "state"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    # Jobs are submitted while the pilot is up: it waits for them rather than leaving after a few empty matches.
    pilot.start(cores=1, max_empty_matches=1000)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    r = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    jobs = pilot.grid.user.list_jobs()
    assert {j["state"] for j in jobs} <= {"DONE", "WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING"}
    assert any(j["state"] == "DONE" for j in jobs)
