"""A CE that offers several pilot versions from a CVMFS tree (pilot_tree, pilot_version; docs/wheels.md "Pilot
versions"): the tree holds two versions laid out by tools/cvmfs_tree.py, this checkout's wheel and the same wheel
saying it is an older version (support.wheels.reversioned, so its runner really reports that version); the CE pins
each in turn (and `latest`) and a real pilot of that version runs a job, the job's trace naming its version and
installation; a pinned version the tree lacks gets no pilot at all (logged, the cycle's report, the metric) until it
is published, and then runs without restarting the CE."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Tuple

import pytest
import urllib3
from support.metrics import Exposition
from support.wheels import lay_out_tree, reversioned

from gridpilot.ce import metrics
from gridpilot.ce.command import describe
from gridpilot.testing import LocalGrid

ARCH = platform.machine()
#: The second version: older than any real one, so `latest` stays this checkout's.
OLD = "0.0.1"
JDL = 'Executable = "/bin/sh";\nArguments = "-c \'echo ran\'";\nTTL = 120;\n'


@pytest.fixture(scope="module")
def tree(gridpilot_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, str]:
    """<root>/<this version>/<arch>, <root>/OLD/<arch>, <root>/latest -> this version; (root, this version)."""
    dist = tmp_path_factory.mktemp("dist")
    shutil.copy(gridpilot_wheel, dist)
    reversioned(gridpilot_wheel, OLD, dist)
    current = gridpilot_wheel.name.split("-")[1]
    root = tmp_path_factory.mktemp("cvmfs") / "pilot"
    for version in (OLD, current):
        lay_out_tree(root, dist, "--arch", ARCH, "--version", version)
    assert os.readlink(root / "latest") == current
    return root, current


def job_trace(grid: LocalGrid, job: int) -> str:
    return "\n".join(e["text"] for e in grid.user.trace(job))


@pytest.mark.parametrize("pin", [OLD, "latest"])
def test_the_pinned_version_runs_the_job_and_its_trace_names_it(tree, tmp_path, pin):
    root, current = tree
    version = current if pin == "latest" else pin
    with LocalGrid(tmp_path / "grid") as grid:
        job = grid.user.submit(JDL)
        f = grid.start_ce(pilot_tree=str(root), pilot_version=pin)
        said = describe(f)
        (done,) = grid.wait([job], 120)
        grid.stop_ce()
        trace = job_trace(grid, job)
        assert done["state"] == "DONE", (done, trace)
    # The runner that ran it was that version's, from that version's directory (latest resolved, not the link).
    assert f"Running gridpilot JobAgent/{version} on " in trace, trace
    assert f"Pilot installation: gridpilot {version} at {root.resolve() / version / ARCH} (CPython " in trace, trace
    (pilot_dir,) = [p for p in Path(f.settings.pilot_dir).iterdir() if (p / "pilot.sh").exists()][:1]
    assert str(root / version / ARCH / "bin" / "gridpilot") in (pilot_dir / "pilot.sh").read_text()
    # The runner logs the same line at its start (its output, which the batch system keeps).
    output = (pilot_dir / "pilot.out").read_text()
    assert f"Pilot installation: gridpilot {version} at {root.resolve() / version / ARCH} " in output, output
    record = json.loads((pilot_dir / "pilot.json").read_text())
    assert (record["version"], record["install_path"]) == (version, str(root / version / ARCH))
    # What `gridpilot ce` says at its start.
    assert f"pilot version {pin} from pilot_tree {root}" in said, said
    assert f"{f.shapes[0].label()}: {version} {ARCH} at {root / version / ARCH}" in said, said


def test_a_pinned_version_missing_from_the_tree_gets_no_pilot_until_it_is_published(tree, tmp_path, caplog):
    root, _ = tree
    caplog.set_level(logging.INFO, logger="gridpilot.ce")
    with LocalGrid(tmp_path / "grid") as grid:
        job = grid.user.submit(JDL)
        f = grid.start_ce(pilot_tree=str(root), pilot_version="9.9.9")
        # A few cycles: the job waits, nothing is submitted (not another version instead), and the CE says why.
        deadline = time.monotonic() + 60
        while f.stats.snapshot().cycles < 3:
            assert time.monotonic() < deadline, "the CE did not cycle"
            time.sleep(0.2)
        report = grid.ce_report
        assert report is not None and not f.pilots and not report.submitted
        (why,) = report.missing.values()
        assert f"pilot_version 9.9.9: pilot_tree {root} has no version 9.9.9" in why, why
        assert "no installation for" in report.summary()
        server = metrics.serve(f.stats, f.reach, "127.0.0.1", 0)
        try:
            m = Exposition(urllib3.request("GET", server.url, timeout=10).data.decode())
        finally:
            server.close()
        assert m.value("gridpilot_ce_install_missing", shape=f.shapes[0].label()) == 1
        assert grid.user.get_job(job)["state"] == "WAITING"
        assert caplog.text.count("no pilots of shape") == 1, "said once, not every cycle"
        # Published (a copy of another version's relocatable environment stands in for it): taken at the next
        # cycle, without restarting the CE.
        shutil.copytree(root / OLD, root / ".9.9.9.tmp", symlinks=True)
        os.rename(root / ".9.9.9.tmp", root / "9.9.9")
        try:
            (done,) = grid.wait([job], 120)
            grid.stop_ce()
            trace = job_trace(grid, job)
        finally:
            shutil.rmtree(root / "9.9.9")
        assert done["state"] == "DONE", (done, trace)
    assert f"Pilot installation: gridpilot {OLD} at {root.resolve() / '9.9.9' / ARCH} " in trace, trace
    assert "has its installation again" in caplog.text
    assert f.stats.snapshot().missing == {}
