"""Executed documentation pages (docs/operators.md, docs/users.md): their fenced blocks, the command blocks a reader
types, and running those blocks in order in one `bash -euo pipefail` with a deadline and a failure message that
names the block (its first line and where it starts on the page)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
#: The line a block's script writes to stderr before it runs, so a failure can be traced back to its block.
_MARK = ">>> block {n}"
_MARK_RE = re.compile(r"^>>> block (\d+)$", re.M)


@dataclass(frozen=True)
class Block:
    """A fenced block of a page: its tag (sh, text, ...), its text, and the page line its first text line is on."""

    tag: str
    body: str
    line: int

    @property
    def first_line(self) -> str:
        return next((ln.strip() for ln in self.body.splitlines() if ln.strip()), "")


def blocks(text: str) -> List[Block]:
    """Every fenced block of the page, in order."""
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 2) for m in _FENCE.finditer(text)]


def command_blocks(text: str) -> List[Block]:
    """The blocks a reader types: ```sh as they are; ```console with their `$ ` prompts removed and the output
    lines left out."""
    out = []
    for b in blocks(text):
        if b.tag == "sh":
            out.append(b)
        elif b.tag == "console":
            typed = "".join(ln[2:] for ln in b.body.splitlines(keepends=True) if ln.startswith("$ "))
            out.append(Block(b.tag, typed, b.line))
    return out


def script(steps: Sequence[Block]) -> str:
    """One bash script of the blocks in order, each after a marker line on stderr. They share one shell, as in one
    terminal: a block starts where the one before ended (variables, directory)."""
    lines = ["set -euo pipefail"]
    for n, b in enumerate(steps, 1):
        lines += [f"echo '{_MARK.format(n=n)}' >&2", b.body]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    """What running a page's blocks gave: the combined output, bash's exit code, and the blocks started."""

    page: str
    steps: Sequence[Block]
    out: str
    returncode: int
    #: bash, ended: its process group may hold what the blocks started in the background.
    proc: subprocess.Popen

    @property
    def started(self) -> int:
        found = _MARK_RE.findall(self.out)
        return int(found[-1]) if found else 0

    def failure(self, tail: int = 6000) -> str:
        """Which block failed, by its first line and page line, and the output's end."""
        n = self.started
        where = (f"block {n} of {self.page} (line {self.steps[n - 1].line}: {self.steps[n - 1].first_line!r})"
                 if n else f"the start of {self.page}'s script")
        return f"{where} failed (exit {self.returncode}):\n{self.out[-tail:]}"

    def check(self, extra: str = "") -> None:
        assert self.returncode == 0, self.failure() + (f"\n{extra}" if extra else "")
        assert self.started == len(self.steps), f"{self.page}: {self.started} of {len(self.steps)} blocks ran"


def run_blocks(page: str, steps: Sequence[Block], *, cwd: Path, env: Dict[str, str], timeout: float,
               stop: Optional[Callable[[subprocess.Popen], None]] = None,
               diagnostics: Callable[[], str] = lambda: "") -> Run:
    """Run the blocks in one bash in its own session under `cwd` with exactly `env`. Past `timeout` the test fails
    naming the block running then, after `stop` ended what the blocks started (default: bash's process group);
    after bash exits, what it left behind is the caller's to check and end (kill_group)."""
    path = cwd / (Path(page).stem + ".sh")
    path.write_text(script(steps))
    proc = subprocess.Popen(["bash", str(path)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        (stop or kill_group)(proc)
        out, _ = proc.communicate()
        run = Run(page, steps, out, -1, proc)
        pytest.fail(f"{page} did not finish within {timeout:.0f} s; {run.failure()}\n{diagnostics()}")
    return Run(page, steps, out, proc.returncode, proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the blocks' process group (bash ran in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def clean_environment(drop_path: Sequence[str] = ()) -> Dict[str, str]:
    """This process's environment without the tests' gridpilot settings and virtual environment, and without the
    PATH entries `drop_path`: a fresh shell's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GRIDPILOT_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d and d not in drop_path)
    return env
