"""gridpilot.arc.rest.ArcRest against a real A-REX 6.17 (tests/support/arex.py): bulk submission in one request,
session PUT/GET/listing/download, live and info-provider states, kill, clean, 404 for a job that is gone, and the
trust checks (a key others can read, a missing file, a wrong host name, a CA that did not sign the server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Dict, List, Sequence

import pytest

from gridpilot.arc import ArcError, ArcJobGone, ArcRest

from support.arex import ArexServer

_FINAL = ("FINISHED", "FAILED", "KILLED", "DELETED")
_FINISH_TIMEOUT_S = 180.0
_CLEAN_TIMEOUT_S = 90.0


def _client(server: ArexServer, **overrides) -> ArcRest:
    url = overrides.pop("url", server.rest_url)
    args = dict(cert=server.user_cert, key=server.user_key, ca_file=server.ca_file, timeout_s=30.0)
    args.update(overrides)
    return ArcRest(url, **args)


def _xrsl(name: str, script: str, *, inputs: Sequence[str] = (), outputs: Sequence[str] = ("out.txt",)) -> str:
    parts = ['(executable="/bin/sh")', f'(arguments="-c" "{script}")', '(stdout="out.txt")',
             f'(jobname="{name}")']
    if inputs:
        parts.append("(inputfiles=" + "".join(f'("{i}" "")' for i in inputs) + ")")
    if outputs:
        parts.append("(outputfiles=" + "".join(f'("{o}" "")' for o in outputs) + ")")
    return "&" + "".join(parts)


def _wait_final(client: ArcRest, ids: List[str], timeout_s: float = _FINISH_TIMEOUT_S) -> Dict[str, List[str]]:
    """Each job's live states, in order, until every one is final."""
    seen: Dict[str, List[str]] = {j: [] for j in ids}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for j in ids:
            if seen[j] and seen[j][-1] in _FINAL:
                continue
            state = client.diagnose_state(j)
            if not seen[j] or seen[j][-1] != state:
                seen[j].append(state)
        if all(s and s[-1] in _FINAL for s in seen.values()):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"not final in {timeout_s:.0f} s: {seen}")


def _wait_gone(client: ArcRest, job_id: str) -> None:
    deadline = time.monotonic() + _CLEAN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client.diagnose_state(job_id)
        except ArcJobGone:
            return
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still known {_CLEAN_TIMEOUT_S:.0f} s after clean")


def test_a_bulk_of_three_jobs_runs_through_session_put_get_states_and_clean(arex_server, arc_node_install,
                                                                           tmp_path):
    gridpilot = arc_node_install / "bin" / "gridpilot"
    with _client(arex_server) as client:
        t0 = time.monotonic()
        submitted = client.submit([
            _xrsl("gp-cat", "cat in/data.txt; echo done", inputs=["in/data.txt"]),
            f'&(executable="{gridpilot}")(arguments="--version")(stdout="out.txt")(outputfiles=("out.txt" ""))'
            '(jobname="gp-version")',
            _xrsl("gp-fails", "echo failing; exit 3"),
        ])
        submit_s = time.monotonic() - t0
        assert [s.code for s in submitted] == [201, 201, 201], submitted
        ids = [s.id for s in submitted]
        assert all(ids) and len(set(ids)) == 3, ids
        # The cat job waits in ACCEPTED/PREPARING for its input file; the PUT releases it.
        assert client.list_session(ids[0]) == []
        client.put_file(ids[0], "in/data.txt", b"hello from the test\n")
        assert client.list_session(ids[0]) == ["in/"]
        assert client.list_session(ids[0], "in") == ["data.txt"]

        states = _wait_final(client, ids)
        final_s = time.monotonic() - t0
        print(f"3 jobs submitted in {submit_s:.2f} s (one POST), all final after {final_s:.1f} s: {states}")
        assert [s[-1] for s in states.values()] == ["FINISHED", "FINISHED", "FAILED"], (states,
                                                                                          arex_server.log_tail())
        assert client.failure_reason(ids[0]) is None
        assert client.failure_reason(ids[2]) is not None

        assert client.get_file(ids[0], "out.txt") == b"hello from the test\ndone\n"
        version = client.get_file(ids[1], "out.txt").decode()
        assert version.startswith("gridpilot "), version
        assert client.get_file(ids[2], "out.txt") == b"failing\n"
        dest = tmp_path / "out.txt"
        assert client.download(ids[0], "out.txt", dest) == len(b"hello from the test\ndone\n")
        assert dest.read_bytes() == b"hello from the test\ndone\n"
        assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left beside it
        with pytest.raises(ArcError) as missing:
            client.get_file(ids[0], "never-written.txt")
        assert missing.value.status == 404 and not isinstance(missing.value, ArcJobGone)

        # The info provider's view: every job known, a state word each (it lags; not asserted to be final).
        lagging = client.states(ids + ["0" * 40])
        assert set(lagging) == set(ids), lagging
        assert all(s.isupper() for s in lagging.values()), lagging

        assert client.clean(ids) == {j: 202 for j in ids}
        for j in ids:
            _wait_gone(client, j)
            assert not (arex_server.base / "session" / j).exists()


def test_a_running_job_is_killed(arex_server, tmp_path):
    with _client(arex_server) as client:
        (job,) = client.submit([_xrsl("gp-sleeper", "sleep 600", outputs=[])])
        assert job.id and job.code == 201
        deadline = time.monotonic() + _FINISH_TIMEOUT_S
        while client.diagnose_state(job.id) != "INLRMS":
            assert time.monotonic() < deadline, "never INLRMS"
            time.sleep(0.5)
        # A file bigger than one read block goes in streamed from disk and comes back byte for byte.
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(5 << 20))
        client.put_file(job.id, "sub dir/big.bin", big)
        assert client.list_session(job.id, "sub dir") == ["big.bin"]
        back = tmp_path / "back.bin"
        assert client.download(job.id, "sub dir/big.bin", back) == 5 << 20
        assert back.read_bytes() == big.read_bytes()
        assert client.kill([job.id, "0" * 40]) == {job.id: 202, "0" * 40: 404}
        states = _wait_final(client, [job.id])
        assert states[job.id][-1] == "KILLED", states
        assert client.failure_reason(job.id) is not None
        client.clean([job.id])
        _wait_gone(client, job.id)


def test_a_job_that_is_gone_answers_ArcJobGone_on_every_path(arex_server, tmp_path):
    gone = "0" * 40
    with _client(arex_server) as client:
        for call in (lambda: client.diagnose_state(gone), lambda: client.failure_reason(gone),
                     lambda: client.get_file(gone, "out.txt"), lambda: client.put_file(gone, "x", b"x"),
                     lambda: client.list_session(gone), lambda: client.download(gone, "out.txt", tmp_path / "o")):
            with pytest.raises(ArcJobGone) as e:
                call()
            assert e.value.status == 404
        assert not (tmp_path / "o").exists()


def test_connections_serve_on_after_404_answers(arex_server):
    """Answers whose bodies the client does not want (404s) never leave bytes on a pooled connection for the next
    answer to trip on: many in a row on the client's small pool, each call still gets its own right answer."""
    gone = "0" * 40
    with _client(arex_server) as client:
        for _ in range(12):
            with pytest.raises(ArcJobGone):
                client.get_file(gone, "out.txt")
            with pytest.raises(ArcJobGone):
                client.failure_reason(gone)
            assert client.states([gone]) == {}


def test_a_refused_description_alone_and_in_a_bulk(arex_server):
    with _client(arex_server) as client:
        (refused,) = client.submit(['&(executable="/bin/sh")(arguments="-c" "true"'])
        assert refused.id is None and refused.code == 500 and "parsing" in refused.reason, refused
        # A description that does not parse among several refuses the whole request: nothing was created.
        with pytest.raises(ArcError) as e:
            client.submit([_xrsl("gp-ok", "true"), '&(executable="/bin/sh")(arguments="-c" "true"'])
        assert e.value.status == 500


def test_a_key_others_can_read_and_a_missing_file_are_refused_at_construction(arex_server, tmp_path):
    key = tmp_path / "key.pem"
    shutil.copy(arex_server.user_key, key)
    os.chmod(key, 0o640)
    with pytest.raises(ArcError, match=f"{key}.*readable by others"):
        _client(arex_server, key=key)
    os.chmod(key, 0o600)
    _client(arex_server, key=key).close()
    with pytest.raises(ArcError, match=str(tmp_path / "nope.pem")):
        _client(arex_server, cert=tmp_path / "nope.pem")
    with pytest.raises(ArcError, match=str(tmp_path / "nope.pem")):
        _client(arex_server, key=tmp_path / "nope.pem")
    with pytest.raises(ArcError, match=str(tmp_path / "nope.pem")):
        _client(arex_server, ca_file=tmp_path / "nope.pem")


def test_a_wrong_host_name_is_refused(arex_server):
    # The host certificate names localhost; 127.0.0.1 is the same server under a name it does not hold.
    client = _client(arex_server, url=f"https://127.0.0.1:{arex_server.port}/arex/rest/1.0")
    with pytest.raises(ArcError, match="TLS failed.*certificate verify failed.*(mismatch|match)"):
        client.diagnose_state("0" * 40)
    client.close()


def test_a_ca_that_did_not_sign_the_server_is_refused(arex_server, tmp_path):
    other = tmp_path / "other-ca"
    done = subprocess.run(["arcctl", "test-ca", "--ca-dir", str(other), "--ca-id", "other", "init"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    client = _client(arex_server, ca_file=other / "ARC-TestCA-other.pem")
    with pytest.raises(ArcError, match="TLS failed.*certificate verify failed"):
        client.diagnose_state("0" * 40)
    client.close()
