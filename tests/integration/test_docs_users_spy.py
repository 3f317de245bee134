"""docs/users.md, section "Peeking at a running job: spy": its ```sh blocks run in order in one bash
(`set -euo pipefail`) in a fresh directory against a LocalGrid whose CE forks pilots, with GRIDPILOT_CENTRAL_URL,
GRIDPILOT_TOKEN_FILE (a plain user's token) and `gridpilot` on PATH: the tutorial format every section of the page
follows. The runner of the whole page (tests/integration/test_docs_users.py) replaces this when it is there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from support import paths

from gridpilot.testing import LocalGrid

PAGE = paths.ROOT / "docs" / "users.md"
SECTION = "## Peeking at a running job: spy"
_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def section_blocks() -> str:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end >= 0 else len(text)]
    return "\n".join(b for tag, b in _FENCE.findall(body) if tag == "sh")


def test_the_spy_section_runs(tmp_path: Path):
    script = section_blocks()
    assert "gridpilot spy" in script and "--follow" in script
    with tempfile.TemporaryDirectory(prefix="gridpilot-docs-") as tmp, LocalGrid(Path(tmp) / "grid") as grid:
        grid.start_ce()
        token = tmp_path / "user.token"
        token.write_text(grid.user_token)
        bindir = tmp_path / "bin"
        bindir.mkdir()
        shim = bindir / "gridpilot"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gridpilot "$@"\n')
        shim.chmod(0o755)
        work = tmp_path / "work"
        work.mkdir()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")},
               "GRIDPILOT_CENTRAL_URL": grid.central.url, "GRIDPILOT_TOKEN_FILE": str(token),
               "PATH": f"{bindir}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        # `spy --lines 3` printed three consecutive lines of the payload's, then `kill` its line.
        shown = out.stdout.splitlines()
        steps = [int(s.split()[1]) for s in shown[:3] if re.fullmatch(r"step \d+", s)]
        assert len(steps) == 3 and steps == list(range(steps[0], steps[0] + 3)), out.stdout
        assert "kill requested" in shown[3], out.stdout
