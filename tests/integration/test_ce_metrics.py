"""The CE counts how its pilots end, by the reason of their runner's exit code (from the pilot.exit their script
writes, else the batch system's exit status), and serves its own Prometheus /metrics, read here with
prometheus_client's parser: pilots submitted by shape, in the batch system by state, ended by reason, central's
reachability, cycles. Real central, local backend; the pilots run stand-in installations whose `gridpilot` exits
with the code under test, one the real runner, one none at all, and one is killed outright."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import urllib3
from support.ce import CE, SITE, ce_grid
from support.metrics import Exposition

from gridpilot import __version__, exitcodes
from gridpilot.ce import metrics
from gridpilot.ce.factory import RECORD_NAME
from gridpilot.ce.script import EXIT_NAME
from gridpilot.central import pilots as central_pilots


@pytest.fixture
def grid(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        yield g


def stand_in(tmp_path: Path, name: str, body: str) -> str:
    d = tmp_path / name
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "gridpilot").write_text(f"#!/bin/sh\n{body}\n")
    (d / "bin" / "gridpilot").chmod(0o755)
    return str(d)


def _is_sleeper(p: psutil.Process) -> bool:
    try:
        return p.cmdline()[:2] == ["sleep", "600"]
    except psutil.Error:
        return False


def scrape(url: str) -> Exposition:
    r = urllib3.request("GET", url, timeout=10)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Exposition(r.data.decode())


def test_pilot_ends_are_counted_by_exit_reason_and_served(grid, tmp_path):
    f = grid.factory("local")
    server = metrics.serve(f.stats, f.reach, "127.0.0.1", 0)
    try:
        shape = f.shapes[0]
        pilots = {}
        for key, install in (
            ("unreachable", stand_in(tmp_path, "unreachable", f"exit {exitcodes.CENTRAL_UNREACHABLE}")),
            ("no_install", str(tmp_path / "nowhere")),
            ("killed", stand_in(tmp_path, "sleeper", "exec sleep 600")),
            ("real", sys.prefix),  # this checkout's runner: no job to run, so it ends after a few empty matches
        ):
            f.settings.install_path = install
            pilots[key] = f.submit_one(shape)
        killed = pilots["killed"]
        local = json.loads((killed.directory / "local.json").read_text())
        script = psutil.Process(int(local["pid"]))
        # Wait for the stand-in runner itself: the script's first children are its $(hostname) and $(date)
        # subshells, and killing those with the script could race its fork of the runner (left behind, orphaned).
        deadline = time.monotonic() + 60
        while not any(_is_sleeper(c) for c in script.children(recursive=True)):
            assert time.monotonic() < deadline, "the stand-in runner never started"
            time.sleep(0.05)
        # A node lost: nothing gets to write pilot.exit. The script leads its own session (the local backend starts
        # it so), so one killpg takes the whole tree at once, with no window for a fork between listing and kill.
        os.killpg(script.pid, signal.SIGKILL)
        reports = grid.drive(f, lambda: not f.pilots, 120, "every pilot seen to end")
    finally:
        m = scrape(server.url)
        server.close()

    assert f.ended_reasons == {"central_unreachable": 1, "no_install": 1, "signal_SIGKILL": 1, "ok": 1}, \
        grid.pilot_outputs(f)
    # ... and so does central, from the CE's pilot report (POST /ce/pilots `ended`), for the web view's sites page.
    assert [row["ended"] for row in central_pilots.pilot_counts(grid.central.db)] == [dict(f.ended_reasons)]
    assert (pilots["unreachable"].directory / EXIT_NAME).read_text() == "10\n"
    assert (pilots["no_install"].directory / EXIT_NAME).read_text() == "3\n"
    assert (pilots["real"].directory / EXIT_NAME).read_text() == "0\n"
    assert not (killed.directory / EXIT_NAME).exists(), "the reason came from the batch system's exit status"
    record = json.loads((killed.directory / RECORD_NAME).read_text())
    assert (record["exit_code"], record["exit_reason"], record["state"]) == (-9, "signal_SIGKILL", "failed")
    ended_lines = [r.summary() for r in reports if r.ended]
    assert any("central_unreachable: 1" in line for line in ended_lines), ended_lines

    for name in metrics.NAMES:
        assert name.removesuffix("_total") in m.families, name
    assert m.value("gridpilot_ce_pilots_submitted_total", shape=shape.label()) == 4
    for reason in ("central_unreachable", "no_install", "signal_SIGKILL", "ok"):
        assert m.value("gridpilot_ce_pilots_ended_total", reason=reason) == 1, reason
    assert m.type_of("gridpilot_ce_pilots_ended") == "counter"
    assert {ls["state"]: m.value("gridpilot_ce_pilots_in_batch", **ls) for ls in
            m.labelled("gridpilot_ce_pilots_in_batch")} == {"queued": 0, "running": 0, "held": 0}
    assert m.value("gridpilot_ce_cycles_total") == len(reports)
    assert m.value("gridpilot_ce_cycle_errors_total") == 0
    assert m.value("gridpilot_ce_central_reachable") == 1
    assert abs(m.value("gridpilot_ce_central_last_contact_timestamp_seconds") - time.time()) < 120
    assert m.labelled("gridpilot_ce_info") == [{"backend": "local", "ce": CE, "site": SITE, "version": __version__}]
    assert m.value("process_resident_memory_bytes") > 0 and m.labelled("python_info")
    # The server stopped with close(): its port is free again (SO_REUSEADDR: past the scrape's TIME_WAIT, but
    # never past a listening socket).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen(1)


def ce_command(conf: Path, *args: str, env_code: str = "") -> subprocess.CompletedProcess:
    code = f"{env_code}import sys; from gridpilot.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "ce", "--config", str(conf), *args], capture_output=True,
                          text=True, timeout=120)


#: As on a machine where the `ce` extra was not installed: importing prometheus_client fails.
WITHOUT_PROMETHEUS_CLIENT = "import sys; sys.modules['prometheus_client'] = None; "


def test_metrics_without_prometheus_client_say_which_extra(grid, tmp_path):
    conf = grid.ce_yaml(tmp_path / "ce.yaml")
    r = ce_command(conf, "--metrics-port", "0", "--once", env_code=WITHOUT_PROMETHEUS_CLIENT)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'gridpilot[ce]'" in r.stderr
    # Without metrics asked for, the CE runs without prometheus_client.
    r = ce_command(conf, "--once", env_code=WITHOUT_PROMETHEUS_CLIENT)
    assert r.returncode == 0, r.stderr


def test_a_metrics_port_in_use_is_one_clear_line(grid, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = ce_command(grid.ce_yaml(tmp_path / "ce.yaml", metrics_port=port), "--once")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == f"gridpilot ce: cannot serve metrics on 127.0.0.1 port {port}: Address already in use\n"


def test_the_metrics_port_serves_while_the_ce_runs_and_closes_with_it(grid, tmp_path):
    from support.ce import CEProcess

    conf = grid.ce_yaml(tmp_path / "ce.yaml", metrics_port=0, cycle_interval=0.5)
    with CEProcess(conf, tmp_path) as ce:
        url = ce.metrics_url()
        ce.wait("two cycles", lambda: (scrape(url).get("gridpilot_ce_cycles_total") or 0) >= 2)
        assert ce.stop() == 0
    with pytest.raises(urllib3.exceptions.HTTPError):
        urllib3.request("GET", url, timeout=5, retries=False)
    assert "Traceback" not in ce.err, ce.err
    assert os.path.exists(conf)
