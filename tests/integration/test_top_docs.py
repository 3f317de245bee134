"""docs/users.md's section "Watching everything: top": its ```sh blocks run, in order, in one `bash` with
`set -euo pipefail`, in a fresh directory, against a LocalGrid whose CE forks pilots that run jobs, with
GRIDPILOT_CENTRAL_URL, GRIDPILOT_TOKEN_FILE (a plain user's token) and `gridpilot` on PATH: the tutorial's format.
The tutorial's own runner runs the whole page; this one holds the section until then."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT

from gridpilot.testing import LocalGrid

SECTION = "## Watching everything: top"
_SH = re.compile(r"^```sh\n(.*?)^```\s*$", re.M | re.S)


def _blocks() -> list:
    text = (ROOT / "docs" / "users.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return _SH.findall(text[start:] if end < 0 else text[start:end])


def test_the_top_section_of_users_md_runs(tmp_path):
    blocks = _blocks()
    assert blocks and any("gridpilot top --once" in b for b in blocks)
    with LocalGrid(tmp_path / "grid") as grid:
        grid.start_ce()
        token = tmp_path / "user.token"
        token.write_text(grid.user_token)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        env.update(GRIDPILOT_CENTRAL_URL=grid.central.url, GRIDPILOT_TOKEN_FILE=str(token),
                   PATH=os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", ""))))
        work = tmp_path / "work"
        work.mkdir()
        r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(blocks)], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        assert "state RUNNING" in r.stdout
