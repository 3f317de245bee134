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
from typing import List, Tuple

import psutil
import pytest
from support.require import require_or_skip

from gridpilot import cli_codes, exitcodes
from support import paths

ROOT = paths.ROOT
GUIDE = ROOT / "docs" / "operators.md"
#: Building the wheel, installing it and its dependencies, and running a job through a CE, on a loaded 2-core
#: machine.
TIMEOUT_S = 1200
_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def blocks(text: str) -> List[Tuple[str, str]]:
    """Every fenced block of the page: (its tag, its text), in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def command_blocks(text: str) -> List[str]:
    """The blocks a site admin types: ```sh as they are; ```console with their `$ ` prompts removed and the
    output lines left out."""
    out = []
    for tag, body in blocks(text):
        if tag == "sh":
            out.append(body)
        elif tag == "console":
            out.append("".join(ln[2:] for ln in body.splitlines(keepends=True) if ln.startswith("$ ")))
    return out


def test_the_page_has_the_blocks_the_test_runs():
    tags = [tag for tag, _ in blocks(GUIDE.read_text())]
    assert set(tags) <= {"sh", "console", "text", "yaml", "ini"}, f"a fence tag the test does not know: {tags}"
    steps = command_blocks(GUIDE.read_text())
    assert len(steps) >= 8
    text = "\n".join(steps)
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
    steps = command_blocks(GUIDE.read_text())
    home = tmp_path / "home"
    home.mkdir()
    script = ["set -euo pipefail"]
    for i, body in enumerate(steps, 1):
        # Each block starts where the one before ended (variables, directory), as in one terminal.
        script += [f"echo '>>> block {i}' >&2", body]
    (tmp_path / "guide.sh").write_text("\n".join(script) + "\n")
    # The environment of a fresh shell: no gridpilot of this checkout on PATH, none of the tests' settings.
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GRIDPILOT_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d and d != venv_bin)
    env.update(WHEEL=str(_wheel(tmp_path / "wheels")), GRIDPILOT_HOME=str(home), PORT=str(_free_port()))
    proc = subprocess.Popen(["bash", str(tmp_path / "guide.sh")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        deadline = time.monotonic() + 30
        while _ours(home) and time.monotonic() < deadline:
            time.sleep(0.3)
        left = [" ".join(p.cmdline()) for p in _ours(home)]
    except subprocess.TimeoutExpired:
        _stop(proc, home)
        out, _ = proc.communicate()
        pytest.fail(f"the guide did not finish within {TIMEOUT_S} s:\n{out[-6000:]}\n{_logs(home)}")
    finally:
        _stop(proc, home)
    failed = re.findall(r"^>>> block (\d+)$", out, re.M)
    assert proc.returncode == 0, (f"block {failed[-1] if failed else '?'} of docs/operators.md failed "
                                  f"(exit {proc.returncode}):\n{out[-6000:]}\n{_logs(home)}")
    assert len(failed) == len(steps), "every block ran"
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

    (example,) = [body for tag, body in blocks(GUIDE.read_text()) if tag == "yaml"]
    values = yaml.safe_load(example)
    assert values["backend"] == "slurm"
    del values["ca_file"]
    path = tmp_path / "ce-site1.yaml"
    path.write_text(yaml.safe_dump(values))
    s = load_settings(path)
    assert s.backend == "slurm" and s.metrics_port == 9101 and len(s.resource_shapes()) == 2
