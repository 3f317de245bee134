"""docs/users.md's section "Many jobs from one: masterjobs and splitting", run: its ```sh blocks, in page order, in
one `bash` each with `set -euo pipefail`, in a fresh working directory, against a LocalGrid whose computing element
forks pilots (the format the whole page's runner, tests/integration/test_docs_users.py, uses once it exists; until
then this runs the section it owns). A block checks what matters itself (the masterjob's subjobs all DONE)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT

from gridpilot.testing import LocalGrid

SECTION = "## Many jobs from one: masterjobs and splitting"


def _blocks() -> list:
    page = (ROOT / "docs" / "users.md").read_text()
    section = page.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)


def test_the_masterjob_section_runs(tmp_path: Path):
    blocks = _blocks()
    assert blocks, "the section has no sh block"
    with LocalGrid(tmp_path / "grid") as grid:
        grid.start_ce()
        token = tmp_path / "user.token"
        token.write_text(grid.user_token)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        env.update(GRIDPILOT_CENTRAL_URL=grid.central.url, GRIDPILOT_TOKEN_FILE=str(token),
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
        work = tmp_path / "work"
        work.mkdir()
        for block in blocks:
            out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"{block}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr[-4000:]}"
