"""docs/users.md is executed: its ```sh blocks run in page order in one `bash` (`set -euo pipefail`), in a fresh
temporary working directory, against a running grid on this machine (gridpilot.testing.LocalGrid: an embedded
central, a file:// storage element, a computing element forking pilots that run the jobs), with central's URL and a
plain user's token (not the admin's) in GRIDPILOT_CENTRAL_URL and GRIDPILOT_TOKEN_FILE and this checkout's
`gridpilot` on PATH. Each block checks its own result (the page's jobs must end as it says); ```text blocks (sample
output) are not run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from support import docpages, paths

from gridpilot.testing import LocalGrid

PAGE = paths.ROOT / "docs" / "users.md"
#: The page's jobs last seconds each; pilots start, match and end on a loaded 2-core machine.
TIMEOUT_S = 600


def test_the_page_has_the_blocks_the_test_runs():
    found = docpages.blocks(PAGE.read_text())
    tags = {b.tag for b in found}
    assert tags <= {"sh", "text"}, f"a fence tag this test does not know: {tags} (```sh runs, ```text is shown)"
    text = "\n".join(b.body for b in docpages.command_blocks(PAGE.read_text()))
    for needed in ("gridpilot submit", "--wait", "gridpilot jobs", "gridpilot job ", "gridpilot trace",
                   "gridpilot kill", "gridpilot why", "gridpilot resubmit", "gridpilot top --once"):
        assert needed in text, f"the executed part of the page lost {needed!r}"


def test_the_page_has_the_sections_of_issue_19():
    headings = [ln.lstrip("#").strip() for ln in PAGE.read_text().splitlines() if ln.startswith("#")]
    for section in ("Your own script and files", "Getting the output back: get, ls, cp",
                    "Peeking at a running job: spy", "Watching everything: top",
                    "Many jobs from one: masterjobs and splitting"):
        assert section in headings, f"docs/users.md lost its section {section!r}"


def _logs(grid_dir: Path) -> str:
    parts = []
    for p in sorted(grid_dir.glob("pilots/**/*.out"))[-4:]:
        parts.append(f"--- {p.relative_to(grid_dir)}:\n{p.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def test_the_page_runs_as_written(tmp_path):
    steps = docpages.command_blocks(PAGE.read_text())
    work = tmp_path / "work"
    work.mkdir()
    grid_dir = tmp_path / "grid"
    with LocalGrid(grid_dir) as grid:
        token = tmp_path / "user.token"
        token.write_text(grid.user_token)
        token.chmod(0o600)
        assert grid.admin.whoami()["role"] == "admin" and grid.user.whoami()["role"] == "user"
        grid.start_ce()
        # A fresh shell with this checkout's gridpilot first on PATH and nothing of the tests' settings but the two
        # the page's reader has.
        bin_dir = str(Path(sys.executable).parent)
        env = docpages.clean_environment(drop_path=[bin_dir])
        env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]])
        env.update(GRIDPILOT_CENTRAL_URL=grid.central.url, GRIDPILOT_TOKEN_FILE=str(token),
                   GRIDPILOT_STATE_DIR=str(tmp_path / "no-state"))
        run = docpages.run_blocks("docs/users.md", steps, cwd=work, env=env, timeout=TIMEOUT_S,
                                  diagnostics=lambda: _logs(grid_dir))
        docpages.kill_group(run.proc)
        run.check(_logs(grid_dir))
        mine = grid.admin.list_jobs(limit=100)
        user = grid.user.whoami()["subject"]
    assert len(mine) >= 4 and {j["user"] for j in mine} == {user}, "every job of the page is the plain user's"
