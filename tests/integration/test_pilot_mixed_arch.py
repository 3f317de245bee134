"""A mixed-architecture site end to end (issue 20, section 3): one central, one site, one CE's agent token, two real
JobRunners on this machine: one offering the node's own architecture, the other made another architecture by
`arch_override`, ALICE's option. Each takes only the jobs of its architecture; a job neither can run waits, and
`gridpilot why` names the arch clause for both pilots' offers; a job requiring a container waits with the container
clause where no runtime starts one.

The second pilot is a simulated site map, as the issue allows: qemu-user could run the aarch64 wheel only with an
aarch64 Python, which this machine does not have; arch_override is what makes a real runner offer aarch64 here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List

import orjson
from support.pilot import FAST, MARK_VAR, STOPPED_OR_DONE, Pilot, shell_jdl

from gridpilot import _native


def _start_second_runner(pilot: Pilot, **overrides) -> subprocess.Popen:
    """A second runner of the same CE (the grid's agent token), with its own node name and work directory, marked
    like the first so the leftover check covers its processes too."""
    grid = pilot.grid
    cfg = grid.pilot_config(**{**FAST, **overrides})
    conf = grid.state_dir / "pilot-other.yaml"
    conf.write_bytes(orjson.dumps({k: v for k, v in cfg.__dict__.items() if v is not None}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env[MARK_VAR] = pilot.mark
    with open(grid.state_dir / "runner-other.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gridpilot", "runner", "--config", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def test_each_pilot_of_a_mixed_arch_site_takes_only_the_jobs_of_its_arch(pilot: Pilot):
    own = _native.cpu_info().arch
    other = "aarch64" if own != "aarch64" else "x86_64"
    neither = next(a for a in ("riscv64", "ppc64le") if a != own)
    mine = [pilot.submit(shell_jdl("true", Arch=own), name=f"own-{i}") for i in range(3)]
    theirs = [pilot.submit(shell_jdl("true", Arch=other), name=f"other-{i}") for i in range(3)]
    nowhere = pilot.submit(shell_jdl("true", Arch=neither), name="nowhere")
    contained = pilot.submit(shell_jdl("true", Arch=own, RequireContainer=True), name="contained")
    common = dict(container_runtime="none", cores=2)
    pilot.start(node="wn-own", **common)
    second = _start_second_runner(pilot, node="wn-other", arch_override=other,
                                  workdir=str(pilot.grid.state_dir / "work-other"), **common)
    try:
        final = pilot.wait_final(mine + theirs, timeout=240)
        assert [j["state"] for j in final] == ["DONE"] * 6, "\n".join(pilot.describe(j["id"]) for j in final)
        ran_on: Dict[int, str] = {j["id"]: j["node"] for j in final}
        assert {ran_on[j] for j in mine} == {"wn-own"}, ran_on
        assert {ran_on[j] for j in theirs} == {"wn-other"}, ran_on
        for j in theirs:
            assert f"Node architecture set by arch_override: {other}, not the CPU's {own}" in pilot.trace_text(j)
        for j in mine:
            assert "arch_override" not in pilot.trace_text(j)

        # Both pilots leave after their empty matches; their offers stay for `why`.
        assert pilot.wait_runner_exit(timeout=120) in STOPPED_OR_DONE
        assert second.wait(timeout=120) in STOPPED_OR_DONE
        for job in (nowhere, contained):
            assert pilot.job(job)["state"] == "WAITING"
        # An offer per kind of slot each pilot had (free cores differ as jobs run): every one of either arch.
        offers: List[dict] = pilot.grid.user.why(nowhere)["offers"]
        assert {o["offer"]["arch"] for o in offers} == {own, other}
        assert {o["clause"] for o in offers} == {"arch"}, offers
        by_arch: Dict[str, List[dict]] = {}
        for o in pilot.grid.user.why(contained)["offers"]:
            by_arch.setdefault(o["offer"]["arch"], []).append(o)
        assert {o["clause"] for o in by_arch[own]} == {"container"}, by_arch[own]
        assert all(o["offer"]["containers"] == [] for o in by_arch[own])
        assert {o["clause"] for o in by_arch[other]} == {"arch"}
        # What each offered: the overriding pilot none of this CPU's level or features; both their version.
        assert all(o["offer"]["x86_64_level"] is None for o in by_arch[other])
        versions = {o["offer"]["pilot_version"] for o in by_arch[own] + by_arch[other]}
        assert len(versions) == 1 and None not in versions
    finally:
        if second.poll() is None:
            second.terminate()
            second.wait(60)
    log = (pilot.grid.state_dir / "runner-other.log").read_text(errors="replace")
    assert f"Node architecture set by arch_override: {other}" in log
    assert "arch_override" not in pilot.runner_log()
