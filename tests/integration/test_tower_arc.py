"""The tower end to end, all real: an embedded central, a private A-REX (fork LRMS), a gridpilot installation the
mapped user runs (the offline runner), a file:// storage element. One job with an input and an output: the tower
matches it with its tower token, fetches the input from storage into the ARC session, submits it (the first ARC CE
of the site is down: it is backed off and the second used), is restarted while the ARC job runs and takes the job
back from its database, downloads the result, verifies the output on the storage element against result.json,
registers it, publishes the pilot log, reports everything in bulk and cleans the ARC job. Central then shows the job
DONE with its ARC id and log URL, its trace reads as a pilot's plus the tower's lines, and the output's content is
the payload's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from gridpilot.private_files import write_private
from gridpilot.storage.checksum import digest_file
from gridpilot.testing import SE_NAME, LocalGrid

from support.arex import ArexServer
from support.offlinejob import SLEEPER_SCRIPT, host_pid, process_alive
from support.require import require_or_skip

#: A-REX's plugin for root:// URLs (its data staging of inputs).
XROOTD_DMC = Path("/usr/lib/arc/external/libdmcxrootd.so")
#: The whole way: staging, ~20 s of fork-LRMS polling on each side of the job, the downloads, the reports.
DEADLINE_S = 420.0
SITE = "NOWAN"
TOWER = "tower1"
JDL = """\
Executable = "/bin/sh";
Arguments = "-c 'tr a-z A-Z < input.txt > upper.txt'";
InputFile = { "LF:/gridpilot/towertest/input.txt" };
OutputFile = { "upper.txt@disk=1" };
CPUCores = 1;
MemorySize = "512MB";
TTL = 900;
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(tmp: Path, grid: LocalGrid, arex: ArexServer, install: Path, dead_ce: str) -> Dict[str, Any]:
    token = grid.admin.mint_token("tower", TOWER, site=SITE, ce=TOWER)
    write_private(tmp / "tower.token", token)
    key = tmp / "arc-key.pem"
    key.write_bytes(Path(arex.user_key).read_bytes())
    os.chmod(key, 0o600)
    return {
        "central_url": grid.central.url, "state_dir": str(tmp / "tower"), "name": TOWER,
        "arc_cert": str(arex.user_cert), "arc_key": str(key), "arc_ca_dir": str(arex.ca_dir),
        "log_se": (tmp / "logs").as_uri(), "poll_interval": 1.0, "diagnose_interval": 5.0, "cycle_interval": 1.0,
        "ce_backoff_base": 600.0,
        "sites": [{"site": SITE, "token_file": str(tmp / "tower.token"), "arc_ces": [dead_ce, arex.rest_url],
                   "install_path": str(install), "output_ses": [SE_NAME],
                   "site_map": {"ttl": 86400, "cores": 1, "memory_mb": 4000, "disk_mb": 10000}}],
    }


def _cycle_until(tower: Any, what: str, done: Any, deadline: float) -> None:
    last = None
    while time.monotonic() < deadline:
        last = tower.cycle()
        if done():
            return
        time.sleep(0.5)
    pytest.fail(f"{what}: not within the deadline; last cycle {last}; held "
                f"{[(j.job_id, j.phase, j.arc_state, j.message) for j in tower.db.jobs()]}")


def test_a_job_runs_on_a_node_without_network_through_the_tower(tmp_path: Path, arex_server: ArexServer,
                                                               arc_node_install: Path):
    _one_job_through_the_tower(tmp_path, arex_server, arc_node_install)


def test_the_same_with_slurm_as_the_arc_ces_batch_system(tmp_path: Path, request: pytest.FixtureRequest,
                                                        arc_node_install: Path):
    """As above, with an A-REX whose LRMS is the single-node Slurm: the ARC job is an sbatch job of the mapped
    user in the cluster's partition."""
    try:
        arex = request.getfixturevalue("arex_slurm_server")
    except pytest.FixtureLookupError:
        require_or_skip("no arex_slurm_server fixture (tests/support/arex.py): A-REX with the Slurm LRMS")
    from support import arex as arex_support

    _one_job_through_the_tower(tmp_path, arex, arc_node_install, queue=getattr(arex_support, "SLURM_PARTITION", ""))


def _one_job_through_the_tower(tmp_path: Path, arex_server: ArexServer, arc_node_install: Path,
                               queue: str = "") -> None:
    from gridpilot.arc.rest import ArcJobGone, ArcRest
    from gridpilot.tower import db as phases
    from gridpilot.tower.service import Tower
    from gridpilot.tower.settings import load_settings

    t0 = time.monotonic()
    deadline = t0 + DEADLINE_S
    with LocalGrid(tmp_path / "grid") as grid:
        source = tmp_path / "input.txt"
        source.write_text("hello from the tower\n")
        grid.register_local_file(source, "/gridpilot/towertest/input.txt")
        job_id = grid.user.submit(JDL)
        dead = f"https://localhost:{_closed_port()}/arex/rest/1.0"
        cfg = tmp_path / "tower.yaml"
        values = _settings(tmp_path, grid, arex_server, arc_node_install, dead)
        if queue:
            values["sites"][0]["queue"] = queue
        cfg.write_text(yaml.safe_dump(values))
        settings = load_settings(cfg, environ={})

        tower = Tower(settings)
        _cycle_until(tower, "the ARC job queued", lambda: [j.phase for j in tower.db.jobs()] == [phases.QUEUED],
                     deadline)
        (held,) = tower.db.jobs()
        assert held.job_id == job_id and held.arc_url == arex_server.rest_url and held.arc_id
        assert tower.backoff.failures(dead) == 1, "the ARC CE that is down was not backed off"
        arc_id = held.arc_id
        tower.close()  # as a stop would: the next tower takes the job back from its database

        tower = Tower(settings)
        try:
            _cycle_until(tower, "the job published, reported and its ARC job cleaned", lambda: not tower.db.jobs(),
                         deadline)
        finally:
            tower.close()
        took = time.monotonic() - t0

        job = grid.admin.get_job(job_id)
        assert job["state"] == "DONE", job
        assert job.get("arc_job_id") == arc_id, job
        log_url = job.get("pilot_log_url")
        assert log_url and log_url.startswith((tmp_path / "logs").as_uri()), job
        log_text = Path(log_url[len("file://"):]).read_text()
        assert log_text.strip(), "the published pilot log is empty"

        texts = [e["text"] for e in grid.admin.trace(job_id)]
        joined = "\n".join(texts)
        for expected in (f"Submitted to ARC CE {arex_server.rest_url} as ARC job {arc_id}",
                         f"ARC job {arc_id}: FINISHED", "Registering: ", "Return status: true",
                         "verified on the storage element against result.json", "Pilot log: "):
            assert expected in joined, f"{expected!r} not in the trace:\n{joined}"
        # The node's own lines (the offline runner's ALICE sentences) are in, as a pilot's would be.
        assert any("upper.txt" in t for t in texts), joined

        # What the user sees: `gridpilot trace` heads the trace with the ARC job and the pilot log.
        write_private(tmp_path / "user.token", grid.user_token)
        shown = subprocess.run([sys.executable, "-m", "gridpilot", "trace", str(job_id), "--url", grid.central.url,
                                "--token-file", str(tmp_path / "user.token")], capture_output=True, text=True,
                               timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert f"ARC job: {arc_id}" in shown.stdout and f"Pilot log: {log_url}" in shown.stdout, shown.stdout

        files = grid.admin.job_files(job_id)["files"]
        (out,) = [f for f in files if f["lfn"].endswith("/upper.txt")]
        (replica,) = out["replicas"]
        copy = Path(replica["pfn"][len("file://"):])
        assert copy.read_text() == "HELLO FROM THE TOWER\n"
        d = digest_file(copy)
        assert (out["size"], out["adler32"]) == (d.size, d.adler32)

        with ArcRest(arex_server.rest_url, cert=arex_server.user_cert, key=str(tmp_path / "arc-key.pem"),
                     ca_dir=arex_server.ca_dir) as arc:
            gone = False
            while time.monotonic() < deadline and not gone:
                try:
                    arc.diagnose_state(arc_id)
                    time.sleep(1)
                except ArcJobGone:
                    gone = True
            assert gone, f"ARC job {arc_id} was not cleaned"
        print(f"tower: match -> DONE and cleaned in {took:.1f} s")


def _tower_for(tmp_path: Path, grid: LocalGrid, arex: ArexServer, install: Path, site: Optional[Dict[str, Any]] = None,
               **extra: Any) -> Any:
    from gridpilot.tower.service import Tower
    from gridpilot.tower.settings import load_settings

    values = _settings(tmp_path, grid, arex, install, f"https://localhost:{_closed_port()}/arex/rest/1.0")
    values["sites"][0]["arc_ces"] = [arex.rest_url]
    values["sites"][0].update(site or {})
    values.update(extra)
    cfg = tmp_path / "tower.yaml"
    cfg.write_text(yaml.safe_dump(values))
    return Tower(load_settings(cfg, environ={}))


def _queued(tower: Any) -> bool:
    from gridpilot.tower import db as phases

    return [j.phase for j in tower.db.jobs()] == [phases.QUEUED]


def test_a_job_the_ce_lost_is_submitted_again_then_given_back(tmp_path: Path, arex_server: ArexServer,
                                                            arc_node_install: Path):
    """A-REX answers 404 for an ARC job it does not know (as after losing it): the tower submits the job again,
    once (lost_resubmits: 1); the second time it gives the job back to central, which queues it again."""
    from gridpilot.arc.rest import ArcRest

    deadline = time.monotonic() + DEADLINE_S
    real_ids = []
    with LocalGrid(tmp_path / "grid") as grid:
        source = tmp_path / "input.txt"
        source.write_text("lost and found\n")
        grid.register_local_file(source, "/gridpilot/towertest/input.txt")
        job_id = grid.user.submit(JDL)
        tower = _tower_for(tmp_path, grid, arex_server, arc_node_install, lost_resubmits=1)
        try:
            for round_ in range(2):
                _cycle_until(tower, f"queued ({round_})", lambda: _queued(tower), deadline)
                (held,) = tower.db.jobs()
                real_ids.append(held.arc_id)
                # The CE forgets it: from now on it answers 404 for the id the tower holds.
                tower.db.update(held, arc_id=f"gone{held.arc_id}")
                tower.db.conn.execute("UPDATE jobs SET next_poll = 0")
            _cycle_until(tower, "the job given back", lambda: not tower.db.jobs(), deadline)
        finally:
            tower.close()
        job = grid.admin.get_job(job_id)
        assert job["state"] == "WAITING", job
        texts = "\n".join(e["text"] for e in grid.admin.trace(job_id))
        assert f"lost ARC job gone{real_ids[0]}: submitting the job again (1 of 1)" in texts, texts
        assert "Tower gives the job back" in texts, texts
    with ArcRest(arex_server.rest_url, cert=arex_server.user_cert, key=str(tmp_path / "arc-key.pem"),
                 ca_dir=arex_server.ca_dir) as arc:
        arc.kill(real_ids)


def test_a_kill_from_central_is_carried_out_by_the_node(tmp_path: Path, arex_server: ArexServer,
                                                       arc_node_install: Path):
    """The user kills the job while its payload runs on the node (a `sleep` that wrote its pid and start time into
    the session). A-REX's fork-LRMS kill would signal nothing, so the tower puts kill.request into the session; the
    node's runner ends the job as a pilot ends one central kills. Central shows it KILLED with the pilot's kill
    sentences from the node (not the tower's fallback), the payload's process is really gone (its pid no longer
    there with its start time), nothing is registered, and the ARC job is cleaned."""
    from gridpilot.arc.rest import ArcError, ArcJobGone, ArcRest

    deadline = time.monotonic() + DEADLINE_S
    jdl = (JDL.replace("tr a-z A-Z < input.txt > upper.txt", SLEEPER_SCRIPT)
           .replace('InputFile = { "LF:/gridpilot/towertest/input.txt" };\n', "")
           .replace('OutputFile = { "upper.txt@disk=1" };', 'OutputFile = { "never.txt@disk=1" };\nForcedKillTimeout = 5;'))
    with LocalGrid(tmp_path / "grid") as grid:
        job_id = grid.user.submit(jdl)
        tower = _tower_for(tmp_path, grid, arex_server, arc_node_install, heartbeat_interval=1.0)
        arc = ArcRest(arex_server.rest_url, cert=arex_server.user_cert, key=str(tmp_path / "arc-key.pem"),
                      ca_dir=arex_server.ca_dir)
        gone_at: List[float] = []
        try:
            _cycle_until(tower, "queued", lambda: _queued(tower), deadline)
            (held,) = tower.db.jobs()
            arc_id = held.arc_id or ""

            def payload_pid() -> Optional[Tuple[int, int]]:
                try:
                    text = arc.get_file(arc_id, "payload.pid").decode()
                except ArcError:
                    return None
                ns_pid, start = (int(x) for x in text.split())
                pid = host_pid(ns_pid, start)
                return None if pid is None else (pid, start)

            found = payload_pid()
            while found is None:
                assert time.monotonic() < deadline, (f"the payload never wrote its pid; held "
                                                     f"{[(j.phase, j.arc_state) for j in tower.db.jobs()]}")
                tower.cycle()
                time.sleep(0.5)
                found = payload_pid()
            pid, start = found
            assert process_alive(pid, start)

            def watch() -> None:
                while process_alive(pid, start) and time.monotonic() < deadline:
                    time.sleep(0.05)
                gone_at.append(time.monotonic())

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            asked = time.monotonic()
            grid.user.kill(job_id)
            _cycle_until(tower, "the kill carried out and the ARC job cleaned", lambda: not tower.db.jobs(), deadline)
            watcher.join(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            tower.close()
        assert gone_at and not process_alive(pid, start), f"the payload (pid {pid}) is still running"
        latency = gone_at[0] - asked
        job = grid.admin.get_job(job_id)
        assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), job
        texts = [e["text"] for e in grid.admin.trace(job_id)]
        joined = "\n".join(texts)
        for expected in (f"kill requested by central (kill.request in the job directory: kill requested, passed on "
                         f"by tower {TOWER})",
                         "the JobWrapper is told to end at once: nothing of a job killed by central is uploaded",
                         "killed on request: payload terminated", "Kill reason KILLED (30): Job was killed",
                         f"the request goes into ARC job {arc_id}'s session (kill.request)"):
            assert expected in joined, f"{expected!r} not in the trace:\n{joined}"
        assert "killed through ARC instead" not in joined, joined
        assert grid.admin.job_files(job_id)["files"] == []
        try:
            while time.monotonic() < deadline:
                try:
                    arc.diagnose_state(arc_id)
                except ArcJobGone:
                    break
                time.sleep(1)
            else:
                pytest.fail(f"ARC job {arc_id} not cleaned after the kill")
        finally:
            arc.close()
        # The tower learns of the kill at its next heartbeat (1 s here), the node looks every 2 s.
        print(f"tower kill: asked -> payload gone in {latency:.1f} s")
        assert latency < 120, latency


def _ancestor_running(pid: int, word: bytes) -> Optional[int]:
    """The nearest ancestor of `pid` (this host's pids) whose command line has `word`."""
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            if word in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return pid
        except (OSError, StopIteration, ValueError):
            return None
    return None


def test_a_node_that_does_not_carry_the_kill_out_is_killed_through_arc(tmp_path: Path, arex_server: ArexServer,
                                                                       arc_node_install: Path):
    """The fallback, and the weakness it cannot mend: the node's runner hangs (SIGSTOP here), so kill.request is
    never acted on. kill_grace beyond ForcedKillTimeout after the request, the tower kills the ARC job through ARC,
    reports KILLED (its trace says so), registers nothing and cleans the ARC job. A-REX's fork LRMS signals
    nothing: the payload is still running afterwards (what docs/offline.md and docs/tower.md warn of); the test
    ends it itself."""
    from gridpilot.arc.rest import ArcError, ArcRest

    deadline = time.monotonic() + DEADLINE_S
    jdl = (JDL.replace("tr a-z A-Z < input.txt > upper.txt", SLEEPER_SCRIPT)
           .replace('InputFile = { "LF:/gridpilot/towertest/input.txt" };\n', "")
           .replace('OutputFile = { "upper.txt@disk=1" };', 'ForcedKillTimeout = 5;'))
    left: List[int] = []
    with LocalGrid(tmp_path / "grid") as grid:
        job_id = grid.user.submit(jdl)
        tower = _tower_for(tmp_path, grid, arex_server, arc_node_install, heartbeat_interval=1.0, kill_grace=10.0)
        arc = ArcRest(arex_server.rest_url, cert=arex_server.user_cert, key=str(tmp_path / "arc-key.pem"),
                      ca_dir=arex_server.ca_dir)
        try:
            _cycle_until(tower, "queued", lambda: _queued(tower), deadline)
            arc_id = tower.db.jobs()[0].arc_id or ""
            found: Optional[Tuple[int, int]] = None
            while found is None:
                assert time.monotonic() < deadline, "the payload never wrote its pid"
                tower.cycle()
                time.sleep(0.5)
                try:
                    ns_pid, start = (int(x) for x in arc.get_file(arc_id, "payload.pid").decode().split())
                except ArcError:
                    continue
                pid = host_pid(ns_pid, start)
                found = None if pid is None else (pid, start)
            pid, start = found
            runner = _ancestor_running(pid, b"offline")
            assert runner is not None, f"no `gridpilot offline` above the payload (pid {pid})"
            wrapper = _ancestor_running(pid, b"gridpilot.pilot.wrapper")
            left.extend([p for p in (pid, wrapper, runner) if p is not None])
            os.kill(runner, signal.SIGSTOP)
            grid.user.kill(job_id)
            _cycle_until(tower, "the kill carried out through ARC and the ARC job cleaned",
                         lambda: not tower.db.jobs(), deadline)
            job = grid.admin.get_job(job_id)
            assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), job
            joined = "\n".join(e["text"] for e in grid.admin.trace(job_id))
            assert f"ARC job {arc_id} had not ended 15 s after the kill request (ARC state INLRMS): killed through " \
                   "ARC instead, which with a fork LRMS may leave the payload running" in joined, joined
            assert "Kill reason KILLED (30)" not in joined, "the node's kill sentences, though it was stopped"
            assert grid.admin.job_files(job_id)["files"] == []
            # ARC's kill and clean are done, and the payload runs on: the weakness the node's kill exists for.
            assert process_alive(pid, start), "the fork LRMS's kill ended the payload after all: update the docs"
        finally:
            tower.close()
            arc.close()
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_an_input_on_xrootd_is_staged_by_the_arc_ce_itself(tmp_path: Path, arex_server: ArexServer,
                                                           arc_node_install: Path, xrootd_server: Any):
    """With arc_staging, an input on a root:// storage element is given to ARC as its URL: A-REX's data staging
    fetches it (Debian package nordugrid-arc-plugins-xrootd), the tower never holds it, and the node's runner checks
    it against job.json as any other input."""
    from gridpilot.storage import XRootDStorageElement
    from gridpilot.storage.placement import new_pfn

    if not XROOTD_DMC.exists():
        require_or_skip(f"no {XROOTD_DMC}: A-REX cannot stage root:// URLs (Debian package "
                        "nordugrid-arc-plugins-xrootd)")
    deadline = time.monotonic() + DEADLINE_S
    with LocalGrid(tmp_path / "grid") as grid:
        se = XRootDStorageElement("TEST::XROOTD", xrootd_server.se_url("tower-staging"))
        grid.admin.add_storage_element(se.name, se.url)
        source = tmp_path / "input.txt"
        source.write_text("staged by arc\n")
        pfn = new_pfn(se)
        d = se.put(source, pfn)
        grid.admin.register_file(lfn="/gridpilot/towertest/input.txt", size=d.size, adler32=d.adler32, md5=d.md5,
                                 se=se.name, pfn=pfn)
        job_id = grid.user.submit(JDL)
        tower = _tower_for(tmp_path, grid, arex_server, arc_node_install, site={"arc_staging": True})
        try:
            _cycle_until(tower, "the job done and cleaned", lambda: not tower.db.jobs(), deadline)
        finally:
            tower.close()
        job = grid.admin.get_job(job_id)
        texts = "\n".join(e["text"] for e in grid.admin.trace(job_id))
        assert job["state"] == "DONE", (job, texts)
        assert "inputs: 0 fetched by the tower, 1 staged by the ARC CE" in texts, texts
        assert f"stage-in /gridpilot/towertest/input.txt: staged by the ARC CE from {pfn}" in texts, texts
        (out,) = [f for f in grid.admin.job_files(job_id)["files"] if f["lfn"].endswith("/upper.txt")]
        (replica,) = out["replicas"]
        assert Path(replica["pfn"][len("file://"):]).read_text() == "STAGED BY ARC\n"
