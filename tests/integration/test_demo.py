"""The demo's grid through a computing element: which gridpilot its pilots run, which pilot shapes it offers, and a
CE of LocalGrid whose pilots run a job and, when stopped while a job still runs, are removed with nothing left."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

import gridpilot
from gridpilot.ce.backend import FINAL_STATES
from gridpilot.ce.script import SLOT_TTL_MARGIN_S
from gridpilot.central.broker import misfit, needs_of, parse_site_map
from gridpilot.demo import EXAMPLES, DemoJob, pilot_shapes
from gridpilot.testing import LocalGrid, pilot_install_path
from gridpilot.jdl import load, parse_job


def _version_of(install_path: str) -> str:
    # Nothing of this process's environment but PATH: a local pilot inherits no PYTHONPATH or VIRTUAL_ENV.
    out = subprocess.run([os.path.join(install_path, "bin", "gridpilot"), "--version"], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pilots_run_the_console_script_of_this_environment(tmp_path):
    # `make setup` (and `pip install .`) write bin/gridpilot into the interpreter's environment.
    assert pilot_install_path(tmp_path) == sys.prefix
    assert not (tmp_path / "install").exists()
    assert _version_of(sys.prefix) == f"gridpilot {gridpilot.__version__}"


@pytest.mark.parametrize("console", [None, "#!/usr/bin/python2\n"], ids=["missing", "another-interpreter"])
def test_without_a_console_script_of_ours_pilots_run_a_shim_of_this_interpreter(tmp_path, console):
    scripts = tmp_path / "env" / "bin"
    scripts.mkdir(parents=True)
    if console is not None:
        (scripts / "gridpilot").write_text(console)
        (scripts / "gridpilot").chmod(0o755)
    path = pilot_install_path(tmp_path / "state", scripts_dir=scripts)
    assert path == str(tmp_path / "state" / "install")
    assert _version_of(path) == f"gridpilot {gridpilot.__version__}"


def test_a_gridpilot_found_through_pythonpath_gets_a_shim_that_passes_it_on(tmp_path, monkeypatch):
    # Run from a source tree on PYTHONPATH, the demo's gridpilot may not be the one the console script imports.
    root = str(Path(gridpilot.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", root)
    path = pilot_install_path(tmp_path)
    assert path == str(tmp_path / "install")
    assert f"PYTHONPATH={root}" in (tmp_path / "install" / "bin" / "gridpilot").read_text()
    assert _version_of(path) == f"gridpilot {gridpilot.__version__}"


def _job(jdl: str) -> DemoJob:
    n = needs_of(parse_job(jdl))
    return DemoJob("j", jdl, cores=n.cores, memory_mb=n.memory_mb, ttl=n.ttl)


def _fits_some_shape(job: DemoJob, shapes) -> bool:
    probe = SimpleNamespace(**dataclasses.asdict(needs_of(parse_job(job.jdl))), user=None)
    return any(misfit(probe, parse_site_map({"cores": s["cores"], "memory_mb": s["memory_mb"],
                                              "ttl": s["wall_time"] - SLOT_TTL_MARGIN_S})) is None for s in shapes)


def test_pilot_shapes_give_every_job_a_pilot_it_fits():
    examples = []
    for p in sorted(EXAMPLES.glob("*.jdl")):
        n = needs_of(load(p))
        examples.append(DemoJob(p.stem, p.read_text(), cores=n.cores, memory_mb=n.memory_mb, ttl=n.ttl))
    shapes = pilot_shapes(examples)
    assert [s["cores"] for s in shapes] == [1, 2], "one shape per CPUCores among the examples, smallest first"
    assert all(_fits_some_shape(j, shapes) for j in examples)
    # A job of one's own, larger in every way than the examples, still gets a pilot it fits.
    big = _job('Executable = "/bin/true";\nCPUCores = 4;\nMemorySize = "12GB";\nTTL = 7200;\n')
    shapes = pilot_shapes(examples + [big])
    assert [s["cores"] for s in shapes] == [1, 2, 4]
    assert all(_fits_some_shape(j, shapes) for j in examples + [big])
    # --cores: every pilot that size.
    assert [s["cores"] for s in pilot_shapes(examples, cores=3)] == [3]


def _pilot_processes(ce_pid: int):
    """Processes of the local pilots a CE in process `ce_pid` forked: they carry its batch ids."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("GRIDPILOT_BATCH_ID", "").startswith(
                    f"local:{ce_pid}."):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_local_ce_runs_a_job_and_stopping_it_removes_a_busy_pilot(tmp_path):
    with LocalGrid(tmp_path / "grid") as grid:
        done = grid.user.submit('Executable = "/bin/sh";\nArguments = "-c \'echo hi\'";\nTTL = 120;\n')
        grid.start_ce()
        jobs = grid.wait([done], 120)
        assert jobs[0]["state"] == "DONE", jobs
        trace = "\n".join(e["text"] for e in grid.user.trace(done))
        assert f'BatchId GRIDPILOT_BATCH_ID = "local:{os.getpid()}.' in trace, trace
        # A job that would run for ten minutes: the pilot running it cannot end on its own.
        busy = grid.user.submit('Executable = "/bin/sh";\nArguments = "-c \'sleep 600\'";\nTTL = 900;\n'
                                'ForcedKillTimeout = 2;\n')
        deadline = time.monotonic() + 90
        while grid.user.get_job(busy)["state"] != "RUNNING":
            assert time.monotonic() < deadline, grid.user.get_job(busy)
            time.sleep(0.5)
        assert _pilot_processes(os.getpid()), "the busy pilot's processes should be found by their batch id"
        t0 = time.monotonic()
        states = grid.stop_ce(wait_s=2.0)
        assert time.monotonic() - t0 < 60
        assert states and all(st in FINAL_STATES for st in states.values()), states
        assert grid.factory is None
        left = _pilot_processes(os.getpid())
        assert not left, [p.cmdline() for p in left]
        # Removed mid-job: the runner, told to stop, ended the job and reported it.
        assert grid.user.get_job(busy)["state"] == "ERROR_E"
