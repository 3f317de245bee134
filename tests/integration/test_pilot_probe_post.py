"""A real JobRunner posts its node probe to central (pilot/probepost.py, central/nodeprobes.py): once, not again when
it starts again in the same boot with the node unchanged, and again when the probe changed; a probe central did not
take is posted at the next start (its record is written only once central took it). Each runner is a real `gridpilot runner` process against a real central; it ends
on its own after its empty matches (no job is submitted)."""

from __future__ import annotations

import os
import time

import orjson
from support.pilot import Pilot

from gridpilot import __version__, exitcodes
from gridpilot.pilot.probepost import POSTED_NAME

HOST = os.uname().nodename
POSTED = "Node probe posted to central"
UNCHANGED = "Node probe unchanged since it was posted to central this boot"


def run_once(pilot: Pilot, **overrides) -> str:
    """One runner's life: started, left to end after its empty matches; what it logged."""
    before = len(pilot.runner_log()) if pilot.grid.runner is not None else 0
    pilot.start(max_empty_matches=1, **overrides)
    rc = pilot.wait_runner_exit(120)
    log = pilot.runner_log()[before:]
    assert rc == exitcodes.OK, f"exit {rc}:\n{log[-4000:]}"
    assert "Traceback" not in log, log
    return log


def history(pilot: Pilot) -> list:
    return pilot.grid.admin.node_probes(HOST)["history"]


def test_the_runner_posts_its_probe_once_per_boot_and_again_when_it_changes(pilot: Pilot):
    log = run_once(pilot)
    assert POSTED in log and "a change: history kept" in log, log
    h = history(pilot)
    assert len(h) == 1
    first = pilot.grid.admin.node_probes(HOST)["latest"]
    assert first["probe"]["pilot_version"] == __version__ and first["posted_by"].startswith("agent ")
    (node,) = [n for n in pilot.grid.admin.nodes()["nodes"] if n["host"] == HOST]
    assert node["site"] == "LOCAL" and node["arch"] == os.uname().machine and node["pilot_version"] == __version__
    record = orjson.loads((pilot.workroot / POSTED_NAME).read_bytes())
    assert record["digest"] == first["digest"] and record["host"] == HOST

    # A second pilot in the same boot, on the same node: nothing posted (central's latest is the first post).
    log = run_once(pilot)
    assert UNCHANGED in log and POSTED not in log, log
    latest = pilot.grid.admin.node_probes(HOST)["latest"]
    assert latest["posted"] == first["posted"] and len(history(pilot)) == 1

    # The node changed as the probe sees it (this pilot may use no container runtime: none is probed).
    log = run_once(pilot, container_runtime="none")
    assert POSTED in log and "a change: history kept" in log, log
    h = history(pilot)
    assert len(h) == 2 and h[0]["probe"]["runtimes"]["found"] == {} and h[0]["digest"] != first["digest"]
    assert h[1]["digest"] == first["digest"]


def test_without_its_record_of_this_central_the_runner_posts_again(pilot: Pilot):
    """The record says which central took the probe: one of another central (or none: a work directory wiped, a
    post central never answered) and the probe goes again; central keeps no new history for the same probe."""
    run_once(pilot)
    path = pilot.workroot / POSTED_NAME
    record = orjson.loads(path.read_bytes())
    for spoil in (lambda: path.write_bytes(orjson.dumps(dict(record, central="http://elsewhere.invalid"))),
                  path.unlink):
        spoil()
        t0 = time.time()
        log = run_once(pilot)
        assert POSTED in log and "unchanged at central" in log, log
        latest = pilot.grid.admin.node_probes(HOST)["latest"]
        assert latest["posted"] >= t0 and len(history(pilot)) == 1, "posted again, the same probe: no new history"
        assert orjson.loads(path.read_bytes()) == record
