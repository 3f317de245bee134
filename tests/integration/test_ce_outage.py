"""The CE rides out central outages: `gridpilot ce` (a real process, the local backend, this checkout's runner in its
pilots, a real central stopped and started on the same port) keeps watching its pilots while central is down,
submits again once it is back, waits for central at start, and logs one line per change of central's state.
`--once` with central down exits 10 with one line. The backoff itself is tested on a clock of the test's own."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import urllib3
from support.ce import CE, SITE, CEProcess, ce_grid, final, shell_jdl
from support.metrics import Exposition

from gridpilot.ce.reach import BACKOFF_FIRST_S, CentralReach
from gridpilot.errors import CentralUnreachable

#: The line when central stops answering (the still-down lines say "unreachable after").
DOWN = r"unreachable \("
STILL = r"still unreachable after"
BACK = r"answers again, after"


@pytest.fixture
def grid(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        yield g


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_backoff_doubles_up_to_its_cap_with_jitter():
    clock = Clock()
    for rand, share in ((lambda: 0.0, 0.5), (lambda: 0.999999, 1.0)):
        reach = CentralReach("http://c", backoff_max=20, clock=clock, rand=rand)
        waits = [reach.failed("refused") for _ in range(8)]
        steps = [min(20, BACKOFF_FIRST_S * 2 ** i) for i in range(8)]
        assert waits == pytest.approx([s * share for s in steps], rel=1e-5)
    reach = CentralReach("http://c", backoff_max=20, clock=clock)
    waits = [reach.failed("refused") for _ in range(200)]
    assert all(10 <= w <= 20 for w in waits[10:]) and len({round(w, 6) for w in waits[10:]}) > 100, "no jitter"
    assert not reach.due() and reach.wait_s() == pytest.approx(waits[-1])
    clock.t += waits[-1]
    assert reach.due()
    reach.ok()
    assert reach.failures == 0 and reach.due() and reach.wait_s() == 0
    assert reach.failed("refused") <= BACKOFF_FIRST_S, "a new outage starts from the first step"


def test_one_log_line_per_change_of_centrals_state(caplog):
    caplog.set_level(logging.INFO, logger="gridpilot.ce")
    clock = Clock()
    reach = CentralReach("http://c:1", backoff_max=5, log_every=60, clock=clock, wall=lambda: 5e8)
    reach.ok()
    for _ in range(100):  # 100 failed tries over 250 s: one line, then one a minute
        reach.failed(CentralUnreachable("http://c:1", "connection refused"))
        clock.t += 2.5
    reach.ok()
    reach.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if re.search(DOWN, m)]) == 1
    still = [m for m in lines if re.search(STILL, m)]
    assert [re.search(r"after (\d+ s|\d+ min)", m).group(1) for m in still] == ["60 s", "2 min", "3 min", "4 min"]
    (back,) = [m for m in lines if re.search(BACK, m)]
    assert "after 4 min unreachable" in back
    assert len(lines) == 6 and reach.last_contact == 5e8


def test_once_with_central_down_exits_10_with_one_line(grid, tmp_path):
    conf = grid.ce_yaml(tmp_path / "ce.yaml")
    grid.central.stop()
    try:
        r = subprocess.run([sys.executable, "-m", "gridpilot", "ce", "--config", str(conf), "--once"],
                           capture_output=True, text=True, timeout=120)
    finally:
        grid.central.start()
    assert r.returncode == 10, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"gridpilot ce: central at {grid.central.url} unreachable: "), r.stderr


def ce_metrics(url: str) -> Exposition:
    r = urllib3.request("GET", url, timeout=10)
    assert r.status == 200
    return Exposition(r.data.decode())


def wait_for(what: str, until, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def batch_id_of(grid, job_id: int) -> str:
    return re.search(r'BatchId GRIDPILOT_BATCH_ID = "local:(\S+?)"', grid.trace_text(job_id)).group(1)  # type: ignore[union-attr]


def kill_pilot(grid, batch: str) -> None:
    """SIGKILL a local pilot and everything below it, as a node that is lost."""
    records = [json.loads(p.read_text()) for p in Path(grid.settings("local").pilot_dir).glob("*/local.json")]
    pid = next(int(r["pid"]) for r in records if r["batch_id"] == batch)
    top = psutil.Process(pid)
    for p in [top, *top.children(recursive=True)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def wait_done(grid, job_id: int, timeout: float = 120.0) -> None:
    wait_for(f"job {job_id} final", lambda: final(grid.job(job_id)["state"]), timeout)
    assert grid.job(job_id)["state"] == "DONE", grid.trace_text(job_id)


def test_the_ce_rides_out_a_central_outage(grid, tmp_path):
    conf = grid.ce_yaml(tmp_path / "ce.yaml", cycle_interval=0.5, central_backoff_max=1.0,
                        central_down_log_interval=2.0, metrics_port=0, log_level="INFO")
    central = grid.central
    # Both jobs wait before the CE's first probe: a probe between the two submits would see one job, and the one
    # pilot it sends counts as on its way for startup_grace (30 s), long enough to run the 8 s job and then take the
    # other itself, so the two would never run at once.
    through = grid.user.submit(shell_jdl("sleep 8"))
    lost = grid.user.submit(shell_jdl("sleep 600"))
    with CEProcess(conf, tmp_path) as ce:
        metrics = ce.metrics_url()
        wait_for("both jobs running", lambda: {grid.job(j)["state"] for j in (through, lost)} == {"RUNNING"})

        lost_pilot = batch_id_of(grid, lost)
        central.stop()
        ce.wait_err(DOWN)
        assert ce_metrics(metrics).value("gridpilot_ce_central_reachable") == 0
        # A pilot lost while central is down: the CE sees it end and counts it, to report when central is back.
        kill_pilot(grid, lost_pilot)
        wait_for("the lost pilot counted", lambda: ce_metrics(metrics).get(
            "gridpilot_ce_pilots_ended_total", reason="signal_SIGKILL") == 1)
        ce.wait_err(STILL, n=2)
        m = ce_metrics(metrics)
        assert m.value("gridpilot_ce_pilots_in_batch", state="running") == 1, "the other pilot is still watched"
        assert m.value("gridpilot_ce_pilots_submitted_total", shape="1c/500MB/900s") == 2
        down_at = m.value("gridpilot_ce_central_last_contact_timestamp_seconds")
        central.start()
        back_at = time.time()
        ce.wait_err(BACK)
        resumed_s = time.time() - back_at

        def central_saw_failed() -> bool:
            return Exposition(grid.admin.metrics()).get("gridpilot_ce_pilots", ce=CE, site=SITE, state="failed") == 1

        wait_for("the lost pilot reported to central once it is back", central_saw_failed)
        wait_done(grid, through)
        wait_for("the pilot that ran through the outage seen to end", lambda: ce_metrics(metrics).get(
            "gridpilot_ce_pilots_ended_total", reason="ok") == 1)
        after = grid.user.submit(shell_jdl("echo after"))
        wait_done(grid, after)
        m = ce_metrics(metrics)
        assert m.value("gridpilot_ce_pilots_submitted_total", shape="1c/500MB/900s") == 3, "one new pilot after"
        assert m.value("gridpilot_ce_central_reachable") == 1
        assert m.value("gridpilot_ce_central_last_contact_timestamp_seconds") > down_at
        assert ce.proc.poll() is None
        rc = ce.stop()
    err = ce.err
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err, err
    assert ce.count(DOWN) == 1 and ce.count(BACK) == 1, err
    outage_s = back_at - (down_at or back_at)
    assert 2 <= ce.count(STILL) <= outage_s / 2 + 1, (outage_s, err)
    assert resumed_s < 30, resumed_s


def test_the_ce_waits_for_central_at_start(grid, tmp_path):
    conf = grid.ce_yaml(tmp_path / "ce.yaml", cycle_interval=0.5, central_backoff_max=1.0,
                        central_down_log_interval=2.0, metrics_port=0, log_level="INFO")
    grid.central.stop()
    try:
        with CEProcess(conf, tmp_path) as ce:
            metrics = ce.metrics_url()
            ce.wait_err(DOWN)
            assert ce_metrics(metrics).value("gridpilot_ce_central_reachable") == 0
            ce.wait_err(STILL)
            assert "gridpilot ce: site" not in ce.out, "started without central"
            grid.central.start()
            ce.wait_err(BACK)
            ce.wait("the CE started", lambda: "gridpilot ce: site" in ce.out)
            job = grid.user.submit(shell_jdl("echo late"))
            wait_done(grid, job)
            assert ce.stop() == 0
    finally:
        if grid.central.central is None:
            grid.central.start()
    assert "Traceback" not in ce.err
    assert ce.count(DOWN) == 1 and ce.count(BACK) == 1, ce.err
