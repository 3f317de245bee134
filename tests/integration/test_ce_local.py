"""The computing element with the local backend: pilots forked on this machine run the jobs, each trace names the local
pilot that ran it, no process of a pilot shows the agent token, and removing a pilot mid-job ends the job cleanly."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from support.ce import CE, SITE, ce_grid, shell_jdl
from support.sysfs import add_device

from gridpilot.ce.backend import FAILED, FINISHED, RUNNING, Resources
from gridpilot.ce.factory import RECORD_NAME, Factory
from gridpilot.ce.local import LocalBackend
from gridpilot.client import CentralClient
from gridpilot.errors import BatchError


@pytest.fixture
def grid(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        yield g


def test_local_pilots_run_the_jobs_and_each_trace_names_its_pilot(grid):
    ids = [grid.user.submit(shell_jdl(f"echo job {i}")) for i in range(3)]
    f = grid.factory("local", max_running=2)
    first = f.cycle()
    assert not first.errors, first.errors
    assert len(first.submitted) == 2, "max_running bounds the pilots in the batch system"
    jobs = grid.wait_jobs(f, ids, {"DONE"}, timeout=120)
    assert [j["state"] for j in jobs] == ["DONE"] * 3
    names = {f"local:{p.batch_id}" for r in [first] for p in r.submitted}
    for j in jobs:
        m = re.search(r'BatchId GRIDPILOT_BATCH_ID = "(local:\S+?)"', grid.trace_text(j["id"]))
        assert m, grid.trace_text(j["id"])
        assert m.group(1).startswith("local:")
    assert any(f'BatchId GRIDPILOT_BATCH_ID = "{n}"' in grid.trace_text(j["id"]) for j in jobs for n in names)
    grid.drive(f, lambda: not f.pilots, 60, "pilots ended")
    assert f.ended[FINISHED] >= 2 and f.ended[FAILED] == 0


def test_the_agent_token_is_in_no_argv_and_no_environment_of_the_pilot(grid):
    job_id = grid.user.submit(shell_jdl("sleep 600"))
    f = grid.factory("local")
    grid.wait_jobs(f, [job_id], {"RUNNING"}, timeout=90)
    (pilot,) = f.pilots.values()
    token_file = pilot.directory / "agent.token"
    # The file: 0600, its owner's, holding a real token.
    st = token_file.stat()
    assert st.st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    from gridpilot.client import CentralClient

    me = CentralClient(grid.central.url, token, retries=0).whoami()
    assert (me["role"], me["site"], me["ce"]) == ("agent", f.site, f.ce)
    # Short-lived, yet long enough for the longest this pilot could wait in a queue and then run.
    assert me["expires"] - me["issued"] == pytest.approx(
        f.settings.max_queue_time + f.settings.cycle_interval + f.settings.wall_time + f.settings.token_margin, abs=1)
    procs = grid.marked_processes()
    assert len(procs) >= 4, "script, runner, agent, wrapper and payload should be running"
    payloads = []
    for p in procs:
        try:
            env, argv = p.environ(), p.cmdline()
        except psutil.Error:
            continue
        assert token not in " ".join(argv), f"the token is in the argv of {p.pid} {argv}"
        assert all(token not in v for v in env.values()), f"the token is in the environment of {p.pid} {argv}"
        if env.get("ALIEN_PROC_ID") == str(job_id):
            payloads.append(p)
            assert not any(k.startswith("GRIDPILOT_TOKEN") for k in env), f"payload {p.pid} sees the token file"
    assert payloads, "the payload was not among the pilot's processes"
    f.backend.remove(pilot.batch_id)
    job = grid.wait_jobs(f, [job_id], {"ERROR_E", "WAITING"}, timeout=90)[0]
    assert job["state"] == "ERROR_E"
    assert not grid.leftovers()
    assert not token_file.exists(), "the token file outlived its pilot"


def test_a_pilot_without_work_ends_on_its_own(grid):
    f = grid.factory("local")
    # No waiting job: the CE submits nothing.
    r = f.cycle()
    assert r.waiting and sum(r.waiting.values()) == 0 and not r.submitted
    # A pilot submitted by hand finds nothing and leaves after its empty matches.
    (shape,) = f.shapes
    p = f.submit_one(shape)
    grid.drive(f, lambda: not f.pilots, 60, "the idle pilot ended")
    assert f.ended[FINISHED] == 1, Path(p.directory / "pilot.out").read_text()


def fake_node(root: Path, *vendors: str) -> str:
    """A sysfs with these GPUs (PCI vendor ids), as the kernel lays them out; its path."""
    for i, vendor in enumerate(vendors):
        add_device(root, f"0000:{0x41 + i:02x}:00.0", "0x030200", vendor, "0x2321", "0", None)
    (root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
    return str(root / "sys")


def no_installation(tmp_path: Path) -> str:
    # A pilot whose installation has no bin/gridpilot exits at once (script.py): only the CE's side is looked at.
    d = tmp_path / "no-installation"
    d.mkdir(exist_ok=True)
    return str(d)


def test_a_gpu_shape_is_refused_at_start_where_this_machine_has_no_such_gpus(grid, tmp_path):
    shapes = [{}, {"gpus": 1, "gpu_vendor": "NVIDIA"}]
    s = grid.settings("local", shapes=shapes)
    client = CentralClient(s.central_url, s.token())
    with pytest.raises(BatchError) as e:
        Factory(s, client, LocalBackend(sysfs=fake_node(tmp_path / "none")), site=SITE, ce=CE)
    assert "shape 1c/500MB/900s/1gpu(NVIDIA) asks for 1 NVIDIA GPU(s), and this machine has 0 of them" in str(e.value)
    assert not list(Path(s.pilot_dir).glob("*")), "nothing submitted"
    with pytest.raises(BatchError, match=r"has 0 of them \(AMD"):
        Factory(s, client, LocalBackend(sysfs=fake_node(tmp_path / "amd", "0x1002")), site=SITE, ce=CE)
    # Two NVIDIA GPUs: the shape is one this machine can run.
    Factory(s, client, LocalBackend(sysfs=fake_node(tmp_path / "nv", "0x10de", "0x10de")), site=SITE, ce=CE)


def test_cpu_and_gpu_shapes_each_get_pilots_for_their_own_jobs(grid, tmp_path):
    """One real cycle through central's real probe: the CPU shape is sent without GPUs, the GPU shape with its GPUs
    in the site map, and each gets one pilot per job that only it can run."""
    cpu_jobs = [grid.user.submit(shell_jdl("true")) for _ in range(3)]
    gpu_jdl = shell_jdl("true")
    for extra in ("GPU = 1;", "GPU = 1;", 'GPU = "NVIDIA";', 'GPU = "AMD";', "GPU = 2;"):
        grid.user.submit(gpu_jdl + extra + "\n")
    s = grid.settings("local", shapes=[{}, {"gpus": 1, "gpu_vendor": "NVIDIA"}],
                      install_path=no_installation(tmp_path))
    f = Factory(s, CentralClient(s.central_url, s.token()), LocalBackend(sysfs=fake_node(tmp_path, "0x10de")),
                site=SITE, ce=CE)
    grid.factories.append(f)
    cpu, gpu = f.shapes
    assert (cpu.gpus, gpu.gpus, gpu.gpu_vendor) == (0, 1, "NVIDIA")
    r = f.cycle()
    assert not r.errors, r.errors
    # The GPU shape's probe counts the CPU jobs, the unnamed and NVIDIA GPU jobs; not AMD's, nor the one for two.
    assert r.waiting == {cpu: 3, gpu: 6}, r.summary()
    assert r.planned == {cpu: 3, gpu: 3}
    assert Counter(p.shape for p in r.submitted) == {cpu: 3, gpu: 3}
    assert all(grid.job(j)["state"] == "WAITING" for j in cpu_jobs)


def ce_yaml(grid, path: Path, **over) -> Path:
    """The settings grid.settings makes, as a configuration file (JSON is YAML)."""
    s = grid.settings("local", **over)
    path.write_text(json.dumps({k: v for k, v in dataclasses.asdict(s).items() if v not in (None, [], {})}))
    return path


def slow_installation(tmp_path: Path, delay_s: float) -> str:
    """This checkout's gridpilot, started after `delay_s`: a pilot that is running but has not matched yet."""
    d = tmp_path / "slow-installation"
    (d / "bin").mkdir(parents=True)
    exe = d / "bin" / "gridpilot"
    exe.write_text(f"#!/bin/sh\nsleep {delay_s}\nexec {sys.prefix}/bin/gridpilot \"$@\"\n")
    exe.chmod(0o755)
    return str(d)


def run_ce_once(conf: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "gridpilot", "ce", "--config", str(conf), "--once"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_restarted_ce_takes_back_the_pilots_of_the_one_before(grid, tmp_path):
    """A CE process submits a pilot and exits (--once leaves local pilots running on their own); the next CE process
    counts that pilot as on its way instead of submitting another for the same job, and sees it end."""
    job_id = grid.user.submit(shell_jdl("echo restarted"))
    install = slow_installation(tmp_path, 10)
    conf = ce_yaml(grid, tmp_path / "ce.yaml", install_path=install)
    assert "submitted 1" in run_ce_once(conf)
    (record,) = Path(grid.settings("local").pilot_dir).glob(f"*/{RECORD_NAME}")
    rec = json.loads(record.read_text())
    assert rec["ce"] == CE and rec["backend"] == "local" and "ended" not in rec
    assert Resources.from_dict(rec["shape"]) == Resources(1, 500, 900)

    f = grid.factory("local", install_path=install)
    first = f.cycle()
    assert not first.errors, first.errors
    assert [p.batch_id for p in first.adopted] == [rec["batch_id"]], first.summary()
    assert first.waiting == {Resources(1, 500, 900): 1}, "the job still waits: the adopted pilot has not matched"
    assert not first.submitted, "a pilot is already on its way for the one waiting job"
    assert first.counts[RUNNING] == 1
    (job,) = grid.wait_jobs(f, [job_id], {"DONE"}, timeout=90)
    batch = rec["batch_id"]
    assert f'BatchId GRIDPILOT_BATCH_ID = "local:{batch}"' in grid.trace_text(job_id)
    grid.drive(f, lambda: not f.pilots, 60, "the adopted pilot seen to end")
    assert f.ended == {FINISHED: 1}, "its end read from the output of a process that is not the CE's child"
    closed = json.loads(record.read_text())
    assert closed["ended"] and closed["state"] == FINISHED
    assert not (record.parent / "agent.token").exists()
    # A third CE process has nothing to take back.
    assert not grid.factory("local").cycle().adopted


def test_a_restarted_ce_can_remove_the_pilots_it_took_back(grid, tmp_path):
    job_id = grid.user.submit(shell_jdl("sleep 600"))
    run_ce_once(ce_yaml(grid, tmp_path / "ce.yaml"))
    deadline = time.monotonic() + 90
    while grid.job(job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline, grid.trace_text(job_id)
        time.sleep(0.3)
    f = grid.factory("local")
    (p,) = f.cycle().adopted
    assert p.name == p.directory.name and p.shape == Resources(1, 500, 900)
    # Not this process's child: found by its pid, checked against the start time recorded with it.
    f.backend.remove(p.batch_id)
    job = grid.wait_jobs(f, [job_id], {"ERROR_E", "WAITING"}, timeout=90)[0]
    assert job["state"] == "ERROR_E", grid.trace_text(job_id)
    assert not grid.leftovers(wait_s=30), "processes of the removed pilot are left"
    grid.drive(f, lambda: not f.pilots, 60, "the removed pilot seen to end")
    assert sum(f.ended.values()) == 1
    assert not (p.directory / "agent.token").exists()
