"""The computing element with the arc backend against a real A-REX (tests/support/arex.py; fork LRMS, and for the
end-to-end test once more with the single-node Slurm as its LRMS): the CE submits
its pilot through REST 1.0 with the test user's certificate, the pilot (an install the mapped user `nobody` can run,
support/arcnode.py) starts in its ARC session directory, matches a job at the real embedded central and runs it to
DONE; the CE follows the ARC job, fetches the pilot's output and exit code into its directory and cleans the job.
A second ARC CE configured first does not answer: it is backed off and the pilot goes to the one that does. The
agent token travels only by PUT into the session directory: it is in no job description and no local file after."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.arex import REST_PATH, ArexServer
from support.ce import ce_grid, shell_jdl

from gridpilot.arc.rest import ArcRest
from gridpilot.ce.arc import FAILED_NAME
from gridpilot.ce.backend import FAILED, FINISHED
from gridpilot.ce.script import EXIT_NAME, OUTPUT_NAME, TOKEN_NAME

_JOB_TIMEOUT_S = 300.0
_END_TIMEOUT_S = 240.0


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released: connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def arc_settings(arex: ArexServer, install: str, **over):
    values = dict(
        install_path=install,
        arc_ces=[{"name": "silent", "url": f"https://localhost:{_closed_port()}/arex"},
                 {"name": "arex", "url": arex.url}],
        arc_cert=str(arex.user_cert), arc_key=str(arex.user_key), arc_ca_file=str(arex.ca_file),
        arc_timeout=20.0, arc_backoff=600.0,
        # Not in the pilot's way: it runs as the mapped user, far from the CE's directories.
        cycle_interval=2.0, max_queue_time=600.0,
    )
    values.update(over)
    return values


@pytest.fixture(params=["fork", "slurm"])
def arc_ce(request) -> ArexServer:
    """The real A-REX a test runs against: with the fork LRMS, then once with the session's single-node Slurm as its
    LRMS (the pilot is then an sbatch job of the mapped user, in the ARC queue named after the partition)."""
    return request.getfixturevalue("arex_server" if request.param == "fork" else "arex_slurm_server")


@pytest.fixture
def grid(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        yield g


def test_a_pilot_through_arex_runs_a_job_to_done_and_is_fetched_and_cleaned(grid, arc_ce, arc_node_install):
    arex_server = arc_ce
    job_id = grid.user.submit(shell_jdl("echo hello from an ARC pilot; sleep 8"))
    f = grid.factory("arc", **arc_settings(arex_server, str(arc_node_install)))
    first = f.cycle()
    assert not first.errors, first.errors
    (p,) = first.submitted
    ce_name, _, arc_id = p.batch_id.partition("/")
    assert ce_name == "arex", "the silent CE was tried first and backed off; the pilot went to the other"
    assert f.backend.backoff_left("silent") > 500
    assert f.backend.backoff_left("arex") == 0
    assert not (p.directory / TOKEN_NAME).exists(), "the CE keeps no copy of the token once uploaded"

    # The token is in the session directory (A-REX's, the mapped user's only), and in no job description.
    session = arex_server.base / "session" / arc_id
    token_file = session / TOKEN_NAME
    deadline = time.monotonic() + 60
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    token = token_file.read_text().strip()
    assert len(token) > 20
    assert session.stat().st_mode & 0o077 == 0 or token_file.stat().st_mode & 0o077 == 0, \
        "the token is readable by others in the session directory"
    for path in (arex_server.base / "control").rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), f"the token is in A-REX's {path}"

    # While the job runs, no process of the pilot (script, runner, agent, wrapper, payload: all carry the test's
    # mark) has the token in its argv or environment.
    grid.wait_jobs(f, [job_id], {"RUNNING", "SAVING", "DONE"}, timeout=_JOB_TIMEOUT_S)
    payloads = []
    for proc in grid.marked_processes():
        try:
            argv, env = proc.cmdline(), proc.environ()
        except psutil.Error:
            continue
        assert token not in " ".join(argv), f"the token is in the argv of {proc.pid} {argv}"
        assert all(token not in v for v in env.values()), f"the token is in the environment of {proc.pid} {argv}"
        if env.get("ALIEN_PROC_ID") == str(job_id):
            payloads.append(proc)
    assert payloads, "the payload was not among the pilot's processes: the scan saw too little"
    (job,) = grid.wait_jobs(f, [job_id], {"DONE", "ERROR_E", "ERROR_IB", "ERROR_V", "FAILED"}, timeout=_JOB_TIMEOUT_S)
    trace = grid.trace_text(job_id)
    assert job["state"] == "DONE", trace
    assert f'BatchId GRIDPILOT_BATCH_ID = "arc:arex/{arc_id}"' in trace, trace

    # The pilot finds no more work and ends; the CE sees its ARC job end, fetches what it left, and cleans it.
    grid.drive(f, lambda: not f.pilots, _END_TIMEOUT_S, "the ARC pilot ended", step=1.0)
    assert f.ended[FINISHED] == 1, grid.pilot_outputs(f)
    out = (p.directory / OUTPUT_NAME).read_text()
    assert f"gridpilot pilot {p.name} on " in out and f"arc:arex/{arc_id}" in out, out
    assert "runner exited with 0" in out, out
    assert (p.directory / EXIT_NAME).read_text().strip() == "0"
    pool = arex_server.http()
    try:
        deadline = time.monotonic() + 60
        status = 200
        while time.monotonic() < deadline:
            status = pool.request("GET", f"{REST_PATH}/jobs/{arc_id}/diagnose/status").status
            if status == 404:
                break
            time.sleep(0.5)
        assert status == 404, f"ARC job {arc_id} not cleaned"
    finally:
        pool.close()
    assert not session.exists()


def test_a_key_others_can_read_is_refused_before_anything_is_submitted(grid, arex_server, tmp_path):
    loose = tmp_path / "key.pem"
    loose.write_bytes(Path(arex_server.user_key).read_bytes())
    loose.chmod(0o644)
    from gridpilot.errors import BatchError

    with pytest.raises(BatchError, match=str(loose)):
        grid.factory("arc", **arc_settings(arex_server, "/nonexistent", arc_key=str(loose)))


def test_a_cycles_pilots_go_in_one_request_and_a_restarted_ce_takes_them_back(grid, arex_server, tmp_path):
    # Pilots whose installation is missing exit at once (script.py: exit code 3, no_install): only the CE's side
    # and A-REX's are looked at.
    empty = tmp_path / "no-installation"
    empty.mkdir()
    ids = [grid.user.submit(shell_jdl("true")) for _ in range(3)]
    over = arc_settings(arex_server, str(empty), arc_ces=[{"name": "arex", "url": arex_server.url}])
    f = grid.factory("arc", **over)
    rest = f.backend.endpoints["arex"].rest
    posts = []
    submit = rest.submit

    def counted(descriptions, dialect="xrsl"):  # the real client, its calls counted
        posts.append(len(descriptions))
        return submit(descriptions, dialect)

    rest.submit = counted
    first = f.cycle()
    assert not first.errors, first.errors
    assert len(first.submitted) == 3 and posts == [3], "three pilots, one POST"
    assert len({p.batch_id for p in first.submitted}) == 3
    for job_id in ids:  # no more work: the restarted CE submits nothing new while it follows the three
        grid.user.kill(job_id)

    # A new CE process (same pilot directory) takes the three back from their records and sees them end.
    f2 = grid.factory("arc", **over)
    reports = grid.drive(f2, lambda: f2.ended[FAILED] + f2.ended[FINISHED] == 3, _END_TIMEOUT_S,
                         "the three pilots ended", step=1.0)
    assert sorted(p.batch_id for p in reports[0].adopted) == sorted(p.batch_id for p in first.submitted)
    assert not any(r.submitted for r in reports)
    # ARC fails a job whose executable exits non-zero; the exit code came back with the pilot's exit file.
    assert f2.ended[FAILED] == 3 and f2.ended_reasons["no_install"] == 3, (f2.ended, f2.ended_reasons)
    for p in first.submitted:
        assert (p.directory / EXIT_NAME).read_text().strip() == "3"
        assert "no gridpilot installation" in (p.directory / OUTPUT_NAME).read_text()
        assert (p.directory / FAILED_NAME).read_text().strip(), "why A-REX failed the job is kept"


def test_the_command_runs_a_cycle_with_arc_ces_and_refuses_a_loose_key_in_one_line(grid, arex_server, tmp_path):
    job_id = grid.user.submit(shell_jdl("true"))
    empty = tmp_path / "no-installation"
    empty.mkdir()
    over = arc_settings(arex_server, str(empty), arc_ces=[{"name": "arex", "url": arex_server.url, "queue": "fork"}],
                        pilot_dir=str(tmp_path / "pilots"))
    conf = grid.ce_yaml(tmp_path / "ce.yaml", "arc", **over)
    r = subprocess.run([sys.executable, "-m", "gridpilot", "ce", "--config", str(conf), "--once"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "backend arc" in r.stdout and f"ARC CE arex at {arex_server.url}, queue fork: shapes" in r.stdout, r.stdout
    m = re.search(r"submitted 1 \(arex/(\w+)\)", r.stdout)
    assert m, r.stdout
    grid.user.kill(job_id)
    # `--once` leaves its pilot to the next CE process: this test cleans its ARC job itself.
    with ArcRest(arex_server.rest_url, cert=arex_server.user_cert, key=arex_server.user_key,
                 ca_file=arex_server.ca_file) as rest:
        rest.kill([m.group(1)])
        rest.clean([m.group(1)])
    loose = tmp_path / "key.pem"
    loose.write_bytes(Path(arex_server.user_key).read_bytes())
    loose.chmod(0o640)
    conf = grid.ce_yaml(tmp_path / "loose.yaml", "arc", **dict(over, arc_key=str(loose)))
    r = subprocess.run([sys.executable, "-m", "gridpilot", "ce", "--config", str(conf), "--once"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(loose) in lines[0], r.stderr
