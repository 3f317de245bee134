"""docs/operators.md is executed: its ```sh blocks run in order in one bash (`set -euo pipefail`) on 127.0.0.1, with
the wheel built from this checkout installed into a fresh virtual environment, a temporary GRIDPILOT_HOME and a
free PORT; the job it submits must end DONE and the output it fetches must hold what the job wrote. Blocks fenced
otherwise (```text, ```yaml) are not run. Needs `maturin` (the test extra's build tool), `openssl` and `curl`
(Debian packages), and pip's access to the index for the `central` extra's wheels."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import psutil
from support.require import require_or_skip

from gridpilot import cli_codes, exitcodes
from support import docpages, paths

ROOT = paths.ROOT
GUIDE = ROOT / "docs" / "operators.md"
#: Building the wheel, installing it and its dependencies, and running a job through a CE, on a loaded 2-core
#: machine.
TIMEOUT_S = 1200


def test_the_page_has_the_blocks_the_test_runs():
    tags = [b.tag for b in docpages.blocks(GUIDE.read_text())]
    assert set(tags) <= {"sh", "console", "text", "yaml", "ini"}, f"a fence tag the test does not know: {tags}"
    steps = docpages.command_blocks(GUIDE.read_text())
    assert len(steps) >= 8
    text = "\n".join(b.body for b in steps)
    for needed in ("--only-binary :all:", "central init", "central serve", "--certfile", "central token --role ce",
                   "central token --role user", "gridpilot ce --config", "gridpilot submit", "catalogue/files"):
        assert needed in text, f"the executed part of the guide lost {needed!r}"


def test_the_exit_code_tables_are_the_codes_defined():
    text = GUIDE.read_text()
    runner, cli = text.split("## Exit codes", 1)[1].split("The commands people type", 1)
    rows = dict(re.findall(r"^\| (\d+) \| ([a-z_]+) \|", runner, re.M))
    assert {int(k): v for k, v in rows.items()} == exitcodes.REASONS
    codes = {int(c) for c in re.findall(r"^\| (\d+) \|", cli, re.M)}
    defined = {v for k, v in vars(cli_codes).items() if k.isupper() and isinstance(v, int)}
    assert codes == defined


def test_the_units_the_guide_installs_are_in_the_repository():
    text = GUIDE.read_text()
    named = set(re.findall(r"deploy/systemd/([\w@.-]+\.service)", text))
    assert named and all((ROOT / "deploy" / "systemd" / n).is_file() for n in named), named


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wheel(out: Path) -> Path:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    if maturin is None:
        require_or_skip("maturin is not installed in this environment")
    r = subprocess.run([maturin, "build", "--release", "--out", str(out), "-q"], cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("gridpilot-*.whl")
    return wheel


def _ours(home: Path) -> List[psutil.Process]:
    """Processes started from the walk-through's directory (the CE's local pilots run in sessions of their own)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and any(str(home) in a for a in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _stop(proc: subprocess.Popen, home: Path) -> None:
    """End what the guide started and left: its bash's process group, then the pilots in their own sessions."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in _ours(home):
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (proc.poll() is None or _ours(home)):
            time.sleep(0.2)


def _logs(home: Path) -> str:
    parts = []
    for p in [home / "central.log", home / "ce" / "ce.log", *sorted(home.glob("ce/pilots/*/pilot.out"))]:
        if p.exists():
            parts.append(f"--- {p.relative_to(home)}:\n{p.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def test_the_guide_runs_as_written(tmp_path):
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            require_or_skip(f"no {tool} command (Debian package {tool}) for docs/operators.md")
    steps = docpages.command_blocks(GUIDE.read_text())
    home = tmp_path / "home"
    home.mkdir()
    # The environment of a fresh shell: no gridpilot of this checkout on PATH, none of the tests' settings.
    env = docpages.clean_environment(drop_path=[str(Path(sys.executable).parent)])
    env.update(WHEEL=str(_wheel(tmp_path / "wheels")), GRIDPILOT_HOME=str(home), PORT=str(_free_port()))
    run = docpages.run_blocks("docs/operators.md", steps, cwd=tmp_path, env=env, timeout=TIMEOUT_S,
                              stop=lambda proc: _stop(proc, home), diagnostics=lambda: _logs(home))
    out = run.out
    try:
        # The guide's last block stops what it started; the CE's pilots may take a moment to follow.
        deadline = time.monotonic() + 30
        while _ours(home) and time.monotonic() < deadline:
            time.sleep(0.3)
        left = [" ".join(p.cmdline()) for p in _ours(home)]
    finally:
        _stop(run.proc, home)
    run.check(_logs(home))
    assert re.search(r"^job \d+ ended DONE", out, re.M), out[-4000:]
    assert (home / "alice" / "hello.txt").read_text() == "hello from gridpilot\n"
    assert re.search(r"^hello.txt: OK$", out, re.M), "the fetched file's md5 is the catalogue's"
    assert (home / "central" / "central.url").read_text().startswith("https://127.0.0.1:")
    assert not left, "the guide's stop step left processes behind:\n" + "\n".join(left)


def test_the_slurm_example_is_a_valid_ce_configuration(tmp_path):
    """The ```yaml block is not run (no Slurm site here), but every field in it is one the CE takes, with a value
    it accepts; only its CA file, which does not exist here, is left out."""
    import yaml

    from gridpilot.ce.settings import load_settings

    (example,) = [b.body for b in docpages.blocks(GUIDE.read_text()) if b.tag == "yaml"]
    values = yaml.safe_load(example)
    assert values["backend"] == "slurm"
    del values["ca_file"]
    path = tmp_path / "ce-site1.yaml"
    path.write_text(yaml.safe_dump(values))
    s = load_settings(path)
    assert s.backend == "slurm" and s.metrics_port == 9101 and len(s.resource_shapes()) == 2
