"""The ARC REST client through an A-REX whose LRMS is the single-node Slurm (`arex_slurm_server`), once: a bulk
of two jobs (one waiting for its input, PUT into the session) runs as Slurm jobs of the mapped user to FINISHED
with its output, a third is killed while running (Slurm really ends it, unlike the fork LRMS), and all are
cleaned."""

from __future__ import annotations

import subprocess
import time
from typing import Dict, List

from gridpilot.arc import ArcJobGone, ArcRest

from support.arex import ArexServer
from support.slurm_cluster import SlurmCluster

_FINAL = ("FINISHED", "FAILED", "KILLED", "DELETED")
#: Slurm adds its own polling (A-REX's scan of the LRMS) to the fork LRMS's latency.
_TIMEOUT_S = 300.0


def _states_until(client: ArcRest, ids: List[str], done, server: ArexServer,
                  cluster: SlurmCluster) -> Dict[str, List[str]]:
    seen: Dict[str, List[str]] = {j: [] for j in ids}
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        for j in ids:
            state = client.diagnose_state(j)
            if not seen[j] or seen[j][-1] != state:
                seen[j].append(state)
        if all(done(s[-1]) for s in seen.values()):
            return seen
        time.sleep(1.0)
    raise AssertionError(f"not there in {_TIMEOUT_S:.0f} s: {seen}\nSlurm: {_slurm_jobs(cluster)}\n"
                         + server.log_tail(6000) + cluster.log_tail())


def _slurm_jobs(cluster: SlurmCluster) -> List[str]:
    """Every job the cluster still remembers (MinJobAge keeps finished ones), as 'NAME USER STATE'."""
    got = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j %u %T %i"], env=cluster.env, capture_output=True,
                         text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    return got.stdout.split("\n")


def test_jobs_run_and_are_killed_through_slurm(arex_slurm_server: ArexServer, slurm_cluster: SlurmCluster):
    s = arex_slurm_server
    with ArcRest(s.rest_url, cert=s.user_cert, key=s.user_key, ca_file=s.ca_file, timeout_s=30.0) as client:
        t0 = time.monotonic()
        submitted = client.submit([
            '&(executable="/bin/sh")(arguments="-c" "cat data.txt; echo on $(hostname)")(inputfiles=("data.txt" ""))'
            '(stdout="out.txt")(outputfiles=("out.txt" ""))(jobname="gp-slurm-cat")(memory="200")',
            '&(executable="/bin/sh")(arguments="-c" "id -un")(stdout="out.txt")(outputfiles=("out.txt" ""))'
            '(jobname="gp-slurm-whoami")(memory="200")',
            '&(executable="/bin/sh")(arguments="-c" "sleep 600")(jobname="gp-slurm-sleeper")(memory="200")',
        ])
        # Each asks for its memory: the cluster has no DefMemPerCPU, so a Slurm job that asks for none is given the
        # whole node's memory and the next one pends until it ends (A-REX passes xRSL memory as --mem-per-cpu).
        ids = [x.id for x in submitted]
        assert all(ids) and [x.code for x in submitted] == [201] * 3, submitted
        client.put_file(ids[0], "data.txt", b"through slurm\n")

        states = _states_until(client, ids[:2], lambda st: st in _FINAL, s, slurm_cluster)
        print(f"2 jobs through Slurm final after {time.monotonic() - t0:.1f} s: {states}")
        assert [v[-1] for v in states.values()] == ["FINISHED", "FINISHED"], (states, s.log_tail())
        assert client.get_file(ids[0], "out.txt").startswith(b"through slurm\non ")
        assert client.get_file(ids[1], "out.txt") == b"nobody\n"
        names = {line.split()[0]: line.split()[1:] for line in _slurm_jobs(slurm_cluster) if line}
        # A-REX names the Slurm job after the xRSL jobname ('-' made '_', cut to 15 characters); the mapped user
        # owns it.
        assert names.get("gp_slurm_whoami", [None])[0] == "nobody", names

        _states_until(client, ids[2:], lambda st: st == "INLRMS", s, slurm_cluster)
        deadline = time.monotonic() + _TIMEOUT_S
        while names.get("gp_slurm_sleepe", [None, None])[1] != "RUNNING":
            assert time.monotonic() < deadline, names
            time.sleep(1.0)
            names = {line.split()[0]: line.split()[1:] for line in _slurm_jobs(slurm_cluster) if line}
        assert client.kill([ids[2]]) == {ids[2]: 202}
        killed = _states_until(client, ids[2:], lambda st: st in _FINAL, s, slurm_cluster)
        assert killed[ids[2]][-1] == "KILLED", killed
        names = {line.split()[0]: line.split()[1:] for line in _slurm_jobs(slurm_cluster) if line}
        assert names["gp_slurm_sleepe"][1] == "CANCELLED", names

        assert client.clean(ids) == {j: 202 for j in ids}
        deadline = time.monotonic() + _TIMEOUT_S
        for j in ids:
            while True:
                try:
                    client.diagnose_state(j)
                except ArcJobGone:
                    break
                assert time.monotonic() < deadline, f"{j} not cleaned"
                time.sleep(1.0)
