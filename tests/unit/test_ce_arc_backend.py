"""The arc back end's own logic, without an A-REX: the xRSL of a pilot, states from A-REX's two vocabularies, the
configuration of several ARC CEs, the script's session-relative paths, and the choice of a CE, its back-off and the
bulk answers, driven through a recording stand-in of the REST client (the real one, against a real A-REX, is in
tests/integration/test_ce_arc.py)."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from gridpilot.arc.rest import ArcError, ArcJobGone, Submitted
from gridpilot.ce.arc import FAILED_NAME, GONE, ArcBackend, ArcCE, pilot_state, xrsl
from gridpilot.ce.backend import FAILED, FINISHED, HELD, QUEUED, RUNNING, PilotSubmission, Resources
from gridpilot.ce.script import EXIT_NAME, OUTPUT_NAME, SCRIPT_NAME, TOKEN_NAME, PilotScript, render_script
from gridpilot.ce.settings import load_settings
from gridpilot.errors import BatchError, ConfigError

SMALL = Resources(1, 2000, 3600)
BIG = Resources(8, 16000, 86400)


def pilot(tmp_path: Path, name: str = "ce1-7-1", shape: Resources = SMALL) -> PilotSubmission:
    d = tmp_path / name
    d.mkdir()
    (d / SCRIPT_NAME).write_text("#!/bin/bash\n")
    (d / TOKEN_NAME).write_text("secret-token\n")
    return PilotSubmission(script=d / SCRIPT_NAME, resources=shape, name=name, output=d / OUTPUT_NAME, workdir=d)


# -- xRSL --------------------------------------------------------------------------------------------------------
def test_the_xrsl_asks_for_the_shape_and_uploads_the_token_as_a_file(tmp_path):
    p = pilot(tmp_path, shape=Resources(4, 8000, 5430, arch="aarch64"))
    ce = ArcCE("ce1", "https://ce1.example.org/arex", (p.resources,), queue="grid",
               runtime_environments=("ENV/SINGULARITY",))
    text = xrsl(p, ce)
    for part in ('(executable="/bin/bash")', f'(arguments="{SCRIPT_NAME}")', '(jobname="ce1-7-1")',
                 f'(inputfiles=("{SCRIPT_NAME}" "")("{TOKEN_NAME}" ""))', f'(stdout="{OUTPUT_NAME}")', f'(stderr="{OUTPUT_NAME}")',
                 f'(outputfiles=("{OUTPUT_NAME}" "")("{EXIT_NAME}" ""))', '(count="4")', '(countpernode="4")',
                 '(memory="2000")', '(walltime="91")', '(queue="grid")', '(architecture="aarch64")',
                 '(runtimeenvironment="ENV/SINGULARITY")', '(environment=("GRIDPILOT_ARC_CE" "ce1"))'):
        assert part in text, (part, text)
    assert "secret-token" not in text
    assert text.startswith("&")


def test_a_plain_shape_names_no_queue_arch_or_runtime_environment(tmp_path):
    text = xrsl(pilot(tmp_path), ArcCE("ce1", "https://ce1.example.org/arex", (SMALL,)))
    assert "queue" not in text and "architecture" not in text and "runtimeenvironment" not in text
    assert '(memory="2000")' in text and '(walltime="60")' in text


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "ce 1"}, "field 'name' must be 1 to 64 letters"),
    ({"name": ""}, "field 'name'"),
    ({"url": "http://ce1.example.org/arex"}, "field 'url' must be an https URL"),
    ({"url": "https:///arex"}, "field 'url'"),
    ({"queue": 'grid")(executable="/bin/rm'}, "field 'queue' must be"),
    ({"runtime_environments": ("ok", 'x"y')}, "field 'runtime_environments[1]'"),
    ({"shapes": ()}, "field 'shapes'"),
])
def test_an_arc_ce_with_a_bad_field_is_refused_naming_it(kwargs, words):
    values = dict(name="ce1", url="https://ce1.example.org:8443/arex", shapes=(SMALL,))
    values.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(words)):
        ArcCE(**values)


def test_the_rest_root_is_under_the_arex_endpoint():
    assert ArcCE("a", "https://h:443/arex", (SMALL,)).rest_url == "https://h:443/arex/rest/1.0"
    assert ArcCE("a", "https://h/arex/", (SMALL,)).rest_url == "https://h/arex/rest/1.0"
    assert ArcCE("a", "https://h/arex/rest/1.0", (SMALL,)).rest_url == "https://h/arex/rest/1.0"


# -- states ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("live, info, state", [
    ("ACCEPTED", None, QUEUED), ("PREPARING", "ACCEPTING", QUEUED), ("SUBMIT", None, QUEUED),
    ("PENDING:PREPARING", None, QUEUED),
    # INLRMS: queued or running in the ARC CE's batch system; the bulk state tells which, until then queued.
    ("INLRMS", None, QUEUED), ("INLRMS", "QUEUING", QUEUED), ("INLRMS", "SUBMITTING", QUEUED),
    ("INLRMS", "RUNNING", RUNNING), ("INLRMS", "HELD", HELD), ("INLRMS", "EXITINGLRMS", RUNNING),
    ("FINISHING", "RUNNING", RUNNING),
    # The LRMS sub-state, where A-REX gives one, is exact.
    ("INLRMS:R", "QUEUING", RUNNING), ("INLRMS:Q", "RUNNING", QUEUED), ("INLRMS:S", None, HELD),
    (None, "INLRMS:R", RUNNING), ("INLRMS:X", "RUNNING", RUNNING),
    # The live state wins over the lagging one.
    ("FINISHED", "RUNNING", FINISHED), ("FAILED", "RUNNING", FAILED), ("KILLED", None, FAILED),
    ("DELETED", None, FAILED), (GONE, "RUNNING", FAILED),
    # Only the bulk state (many pilots at one CE).
    (None, "QUEUING", QUEUED), (None, "RUNNING", RUNNING), (None, "FINISHED", FINISHED), (None, "FAILED", FAILED),
    (None, "KILLED", FAILED), (None, "HELD", HELD), (None, "WIPED", FAILED),
    # Words ARC may add later count as queued, as unknown Slurm states do; nothing said is None.
    ("SOMETHINGNEW", None, QUEUED), (None, "SOMETHINGNEW", QUEUED), (None, None, None), ("", "", None),
])
def test_pilot_states_from_arex_words(live, info, state):
    assert pilot_state(live, info) == state


# -- the script in a session directory ----------------------------------------------------------------------------
def test_relative_paths_are_taken_from_the_session_directory_and_the_batch_id_from_arc(tmp_path):
    spec = PilotScript(name="ce1-7-1", central_url="http://central:8080", site="S", ce="S::CE", backend="arc",
                       resources=SMALL, install_path="/cvmfs/gp/latest/x86_64", token_file=Path(TOKEN_NAME),
                       workdir="work", exit_file=Path(EXIT_NAME))
    text = render_script(spec, created=0)
    assert f'export GRIDPILOT_TOKEN_FILE="$PWD"/{TOKEN_NAME}' in text
    assert 'export GRIDPILOT_WORKDIR="$PWD"/work' in text
    assert f'exit_file="$PWD"/{EXIT_NAME}' in text
    # The environment bash would give the script (bash -n: it parses; the exports run against a session dir).
    session = tmp_path / "session" / "abc123"
    session.mkdir(parents=True)
    exports = "\n".join(line for line in text.splitlines() if line.startswith(("export ", "exit_file=")))
    probe = exports + '\necho "$GRIDPILOT_TOKEN_FILE|$GRIDPILOT_WORKDIR|$exit_file"\n'
    out = subprocess.run(["bash", "-c", probe], cwd=session, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{session}/{TOKEN_NAME}|{session}/work|{session}/{EXIT_NAME}"
    block = text[text.index("if [ -n \"${GRID_GLOBAL_JOBID"):text.index("fi\n", text.index("GRID_GLOBAL")) + 3]
    env = {"PATH": "/usr/bin:/bin", "GRID_GLOBAL_JOBID": "https://ce1:443/arex/abc123", "GRIDPILOT_ARC_CE": "ce1"}
    out = subprocess.run(["bash", "-c", block + 'echo "$GRIDPILOT_BATCH_ID"'], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "arc:ce1/abc123"
    subprocess.run(["bash", "-n", "-c", text], check=True)


def test_absolute_paths_stay_as_they_are(tmp_path):
    spec = PilotScript(name="p", central_url="http://c", site="S", ce="S::CE", backend="slurm", resources=SMALL,
                       install_path="/opt/gp", token_file=tmp_path / TOKEN_NAME, workdir="/scratch/w")
    text = render_script(spec, created=0)
    assert f"export GRIDPILOT_TOKEN_FILE={tmp_path / TOKEN_NAME}" in text
    assert "export GRIDPILOT_WORKDIR=/scratch/w" in text and '"$PWD"' not in text


# -- configuration -------------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ce.yaml"
    p.write_text(text)
    return p


GOOD = """\
backend: arc
arc_cert: /etc/gp/cert.pem
arc_key: /etc/gp/key.pem
arc_ca_dir: /etc/grid-security/certificates
shapes: [{cores: 1, memory_mb: 2000, wall_time: 3600}]
arc_ces:
  - name: ce1
    url: https://ce1.example.org/arex
    queue: grid
    shapes: [{cores: 8, memory_mb: 16000, wall_time: 86400}, {cores: 1, memory_mb: 2000, wall_time: 3600}]
  - name: ce2
    url: https://ce2.example.org:8443/arex
"""


def test_several_arc_ces_each_with_its_shapes(tmp_path):
    s = load_settings(write(tmp_path, GOOD))
    assert s.resource_shapes() == [SMALL, BIG]
    assert s.arc_ce_shapes(0) == [BIG, SMALL] and s.arc_ce_shapes(1) == [SMALL]


@pytest.mark.parametrize("change, words", [
    (("arc_ces:\n  - name: ce1", "arc_ces: []\nx:\n  - name: ce1"), "unknown field 'x'"),
    (("    queue: grid\n", "    queue: grid\n    colour: red\n"), "field 'arc_ces[0]' has unknown keys ['colour']"),
    (("name: ce2", "name: ce1"), "ce.yaml:11: field 'arc_ces[1].name': 'ce1' names two ARC CEs"),
    (("name: ce2\n", ""), "ce.yaml:11: field 'arc_ces[1].name' is missing"),
    (("url: https://ce2.example.org:8443/arex", "url: http://ce2"), "ce.yaml:11: field 'arc_ces[1].url' must "
                                                                      "be an https URL"),
    (("queue: grid", "queue: 'a b'"), "ce.yaml:7: field 'arc_ces[0].queue' must be"),
    (("{cores: 8, memory_mb", "{cores: 0, memory_mb"), "field 'arc_ces[0].shapes[0]': cores must be a whole number"),
    (("{cores: 8, memory_mb", "{cpus: 8, memory_mb"), "field 'arc_ces[0].shapes[0]': unknown key 'cpus'"),
    (("{cores: 8, memory_mb", "{partition: p, cores: 8, memory_mb"), "field 'arc_ces[0].shapes[0].partition': only "
                                                                      "the slurm backend"),
    (("arc_key: /etc/gp/key.pem\n", ""), "field 'arc_key': arc_cert and arc_key go together"),
    (("arc_cert: /etc/gp/cert.pem\narc_key: /etc/gp/key.pem\n", ""), "field 'arc_cert': the arc backend needs a "
                                                                      "client certificate"),
    (("arc_key: /etc/gp/key.pem", "arc_key: key.pem"), "ce.yaml:3: field 'arc_key': 'key.pem' is not an absolute"),
    (("arc_ca_dir:", "pilot_user: grid\narc_ca_dir:"), "ce.yaml:4: field 'pilot_user': an ARC CE runs pilots as"),
    (("wall_time: 86400}", "wall_time: 500000}"), "field 'arc_ces': pilots of wall time 500000 s need an agent token"),
])
def test_a_bad_arc_configuration_says_where_and_what(tmp_path, change, words):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, GOOD.replace(old, new, 1)))
    assert words in str(e.value), str(e.value)


def test_the_arc_backend_needs_an_arc_ce(tmp_path):
    with pytest.raises(ConfigError, match="ce.yaml:1: field 'arc_ces': the arc backend needs at least one ARC CE"):
        load_settings(write(tmp_path, "backend: arc\narc_token_file: /etc/gp/token\n"))


# -- choosing a CE, backing off, bulk answers (a recording stand-in of the REST client) ----------------------------
class Recorder:
    """Answers as a REST client would, from what the test set, and records every call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: List[tuple] = []
        self.refuse: Optional[ArcError] = None
        self.codes: List[int] = []
        self.live: Dict[str, str] = {}
        self.info: Dict[str, str] = {}
        self.files: Dict[str, Dict[str, bytes]] = {}
        self.uploaded: Dict[str, Dict[str, bytes]] = {}
        self.cleaned: List[str] = []
        self._n = 0

    def submit(self, descriptions: Sequence[str], dialect: str = "xrsl") -> List[Submitted]:
        self.calls.append(("submit", len(descriptions)))
        if self.refuse is not None:
            raise self.refuse
        out = []
        for i, _ in enumerate(descriptions):
            code = self.codes[i] if i < len(self.codes) else 201
            self._n += 1
            out.append(Submitted(f"{self.name}job{self._n}" if code == 201 else None, code,
                                 "Created" if code == 201 else "refused"))
        return out

    def put_file(self, job_id: str, name: str, data) -> None:
        self.calls.append(("put", job_id, name))
        self.uploaded.setdefault(job_id, {})[name] = Path(data).read_bytes() if isinstance(data, Path) else data

    def states(self, job_ids: Sequence[str]) -> Dict[str, str]:
        self.calls.append(("states", len(job_ids)))
        if self.refuse is not None:
            raise self.refuse
        return {i: self.info[i] for i in job_ids if i in self.info}

    def diagnose_state(self, job_id: str) -> str:
        self.calls.append(("diagnose", job_id))
        if self.live.get(job_id) == GONE:
            raise ArcJobGone(f"job {job_id} not found", status=404, url="x")
        return self.live[job_id]

    def list_session(self, job_id: str, path: str = "") -> List[str]:
        self.calls.append(("list", job_id))
        return sorted(self.files.get(job_id, {}))

    def download(self, job_id: str, name: str, dest: Path) -> int:
        self.calls.append(("download", job_id, name))
        data = self.files.get(job_id, {}).get(name)
        if data is None:
            raise ArcError(f"no {name}", status=404, url="x")
        dest.write_bytes(data)
        return len(data)

    def failure_reason(self, job_id: str) -> Optional[str]:
        self.calls.append(("failure_reason", job_id))
        return "LRMS error: (-1) Job was killed by the batch system"

    def kill(self, job_ids: Sequence[str]) -> Dict[str, int]:
        self.calls.append(("kill", tuple(job_ids)))
        return {i: 202 for i in job_ids}

    def clean(self, job_ids: Sequence[str]) -> Dict[str, int]:
        self.calls.append(("clean", tuple(job_ids)))
        self.cleaned.extend(job_ids)
        return {i: 202 for i in job_ids}

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def backend(*ces: ArcCE, clock: Optional[Clock] = None, **kw) -> tuple:
    recorders = {ce.name: Recorder(ce.name) for ce in ces}
    b = ArcBackend(ces, clock=clock or Clock(), connect=lambda ce: recorders[ce.name], **kw)  # type: ignore
    return b, recorders


CE1 = ArcCE("ce1", "https://ce1.example.org/arex", (SMALL, BIG))
CE2 = ArcCE("ce2", "https://ce2.example.org/arex", (SMALL,))


def test_the_pilots_of_a_shape_go_in_one_request_and_their_files_after(tmp_path):
    b, rec = backend(CE1)
    pilots = [pilot(tmp_path, f"p-{i}") for i in range(5)]
    ids = b.submit_many(pilots)
    assert ids == [f"ce1/ce1job{i}" for i in range(1, 6)]
    assert rec["ce1"].calls[0] == ("submit", 5)
    assert [c for c in rec["ce1"].calls if c[0] == "submit"] == [("submit", 5)], "one POST for the five"
    for i, p in enumerate(pilots, start=1):
        assert rec["ce1"].uploaded[f"ce1job{i}"] == {SCRIPT_NAME: b"#!/bin/bash\n", TOKEN_NAME: b"secret-token\n"}
        assert not (p.workdir / TOKEN_NAME).exists(), "the CE's copy of the token goes once uploaded"


def test_a_shape_goes_to_the_ce_with_fewest_pilots_that_offers_it(tmp_path):
    b, rec = backend(CE1, CE2)
    assert b.submit_many([pilot(tmp_path, "a"), pilot(tmp_path, "b")]) == ["ce1/ce1job1", "ce1/ce1job2"]
    assert b.submit_many([pilot(tmp_path, "c")]) == ["ce2/ce2job1"]
    # BIG only ce1 offers, however many it holds.
    assert b.submit_many([pilot(tmp_path, "d", BIG)]) == ["ce1/ce1job3"]


def test_a_refusing_ce_is_backed_off_doubling_to_the_cap_and_the_other_used(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gridpilot.arc")  # arc/backoff.py logs the back-offs
    clock = Clock()
    b, rec = backend(CE1, CE2, clock=clock, backoff_s=60, backoff_max_s=200)
    rec["ce1"].refuse = ArcError("connection refused", status=None, url=CE1.rest_url)
    ids = b.submit_many([pilot(tmp_path, "a")])
    assert ids == ["ce2/ce2job1"], "ce1 (fewest pilots, first) refused: the same pilot went to ce2"
    assert b.backoff_left("ce1") == 60 and "backed off for 60 s (failure 1 in a row)" in caplog.text
    # Backed off: not even asked.
    b.submit_many([pilot(tmp_path, "b")])
    assert [c for c in rec["ce1"].calls if c[0] == "submit"] == [("submit", 1)]
    # Its next failures double the wait, up to the cap.
    for want in (120, 200, 200):
        clock.t += 1000
        b.submit_many([pilot(tmp_path, f"x{want}{clock.t:.0f}")])
        assert b.backoff_left("ce1") == want
    # It answers again: the back-off is forgotten.
    clock.t += 1000
    rec["ce1"].refuse = None
    assert b.submit_many([pilot(tmp_path, "z")]) == ["ce1/ce1job1"]
    assert b.backoff_left("ce1") == 0 and "ARC CE ce1 answers again after 4 failures" in caplog.text


def test_when_every_ce_refuses_each_pilot_says_why(tmp_path):
    b, rec = backend(CE1, CE2)
    for r in rec.values():
        r.refuse = ArcError("timed out", status=None, url="x")
    (result,) = b.submit_many([pilot(tmp_path, "a")])
    assert isinstance(result, BatchError)
    assert "no ARC CE takes a 1c/2000MB/3600s pilot now (ce1 refused; ce2 refused)" in str(result)
    (result,) = b.submit_many([pilot(tmp_path, "b")])
    assert "ce1 backed off for 60 s more; ce2 backed off for 60 s more" in str(result)
    # Asked first, so that the factory mints no token for pilots that could go nowhere.
    assert b.unavailable(SMALL) == "no ARC CE takes it now (ce1 backed off for 60 s more; ce2 backed off for 60 s more)"
    assert b.unavailable(BIG) == "no ARC CE takes it now (ce1 backed off for 60 s more)"
    with pytest.raises(BatchError, match="no ARC CE takes"):
        b.submit(pilot(tmp_path, "c"))


def test_a_shape_is_available_while_one_ce_offering_it_is_not_backed_off(tmp_path):
    b, rec = backend(CE1, CE2)
    rec["ce2"].refuse = ArcError("timed out", status=None, url="x")
    b.submit_many([pilot(tmp_path, "a")])  # ce1 first (fewest, as configured): taken, ce2 not asked
    b.submit_many([pilot(tmp_path, "b")])  # ce2 now has fewest: refuses, backed off; ce1 takes it
    assert b.backoff_left("ce2") == 60 and b.backoff_left("ce1") == 0
    assert b.unavailable(SMALL) is None and b.unavailable(BIG) is None


def test_jobs_refused_one_by_one_are_errors_and_the_others_run(tmp_path):
    b, rec = backend(CE1)
    rec["ce1"].codes = [201, 500, 201]
    out = b.submit_many([pilot(tmp_path, f"p{i}") for i in range(3)])
    assert out[0] == "ce1/ce1job1" and out[2] == "ce1/ce1job3"
    assert isinstance(out[1], BatchError) and "refused pilot p1: 500 refused" in str(out[1])
    assert (tmp_path / "p1" / TOKEN_NAME).exists(), "a refused pilot's token was never uploaded (the factory " \
                                                    "deletes it)"
    assert b.backoff_left("ce1") == 0, "a CE that took some is not backed off"


def test_states_ended_pilots_are_fetched_then_cleaned_and_lost_ones_failed(tmp_path):
    b, rec = backend(CE1, diagnose_max=10)
    r = rec["ce1"]
    ps = [pilot(tmp_path, f"p{i}") for i in range(4)]
    ids = [bid.split("/")[1] for bid in b.submit_many(ps)]
    r.live = {ids[0]: "INLRMS", ids[1]: "INLRMS", ids[2]: "FINISHED", ids[3]: GONE}
    r.info = {ids[0]: "QUEUING", ids[1]: "RUNNING"}
    r.files = {ids[2]: {OUTPUT_NAME: b"pilot said\n", EXIT_NAME: b"0\n"}}
    got = b.states()
    assert got == {f"ce1/{ids[0]}": QUEUED, f"ce1/{ids[1]}": RUNNING, f"ce1/{ids[2]}": FINISHED,
                   f"ce1/{ids[3]}": FAILED}
    assert (ps[2].workdir / OUTPUT_NAME).read_bytes() == b"pilot said\n"
    assert (ps[2].workdir / EXIT_NAME).read_bytes() == b"0\n"
    assert r.cleaned == [ids[2]], "the ended pilot is cleaned once fetched; a lost one is gone already"
    # Ended ones are reported once, then known through state_of.
    assert set(b.states()) == {f"ce1/{ids[0]}", f"ce1/{ids[1]}"}
    assert b.state_of(f"ce1/{ids[2]}") == FINISHED and b.state_of(f"ce1/{ids[3]}") == FAILED


def test_above_diagnose_max_the_bulk_state_is_enough(tmp_path):
    b, rec = backend(CE1, diagnose_max=2)
    r = rec["ce1"]
    ids = [bid.split("/")[1] for bid in b.submit_many([pilot(tmp_path, f"p{i}") for i in range(3)])]
    r.info = {ids[0]: "RUNNING", ids[1]: "QUEUING"}
    r.live = {ids[2]: "PREPARING"}
    assert b.states() == {f"ce1/{ids[0]}": RUNNING, f"ce1/{ids[1]}": QUEUED, f"ce1/{ids[2]}": QUEUED}
    assert [c for c in r.calls if c[0] == "diagnose"] == [("diagnose", ids[2])], "only the one the bulk lacks"


def test_a_ce_not_answering_keeps_its_pilots_states_and_is_backed_off(tmp_path):
    clock = Clock()
    b, rec = backend(CE1, clock=clock)
    r = rec["ce1"]
    (bid,) = b.submit_many([pilot(tmp_path, "p")])
    job = bid.split("/")[1]
    r.live, r.info = {job: "INLRMS"}, {job: "RUNNING"}
    assert b.states() == {bid: RUNNING}
    r.refuse = ArcError("timed out", status=None, url="x")
    assert b.states() == {bid: RUNNING}
    assert b.backoff_left("ce1") == 60
    calls = len(r.calls)
    assert b.states() == {bid: RUNNING} and len(r.calls) == calls, "backed off: not asked"


def test_an_output_that_cannot_be_fetched_now_keeps_the_pilot_until_it_can(tmp_path):
    clock = Clock()
    b, rec = backend(CE1, clock=clock)
    r = rec["ce1"]
    p = pilot(tmp_path, "p")
    (bid,) = b.submit_many([p])
    job = bid.split("/")[1]
    r.live, r.info = {job: "FINISHED"}, {}
    r.files = {job: {OUTPUT_NAME: b"out\n"}}

    def broken(job_id, name, dest):
        raise ArcError("connection reset", status=None, url="x")

    r.download = broken  # type: ignore[method-assign]
    assert b.states() == {bid: QUEUED}, "not reported ended before its output is here"
    assert not r.cleaned
    clock.t += 1000
    del r.download
    assert b.states() == {bid: FINISHED}
    assert (p.workdir / OUTPUT_NAME).read_bytes() == b"out\n" and not (p.workdir / EXIT_NAME).exists()
    assert ("download", job, EXIT_NAME) not in r.calls, "a file the session does not list is not asked for"
    assert r.cleaned == [job]


def test_removing_a_pilot_kills_its_arc_job_and_adopting_finds_its_ce(tmp_path):
    b, rec = backend(CE1, CE2)
    b.adopt("ce2/abc123", tmp_path)
    assert "abc123" in b.endpoints["ce2"].jobs
    b.adopt("gone/abc123", tmp_path)  # a CE no longer configured: logged, not taken
    b.adopt("ce1/../etc", tmp_path)
    assert len(b.endpoints["ce1"].jobs) == 0
    b.remove("ce2/abc123")
    assert ("kill", ("abc123",)) in rec["ce2"].calls
    with pytest.raises(BatchError, match="not an arc batch id"):
        b.remove("abc123")


def test_check_shapes_refuses_a_shape_no_ce_offers():
    b, _ = backend(CE2)
    with pytest.raises(BatchError, match="no ARC CE takes pilots of shape 8c/16000MB/86400s"):
        b.check_shapes([SMALL, BIG])


def test_a_token_file_readable_by_others_is_refused(tmp_path):
    t = tmp_path / "arc.token"
    t.write_text("tok\n")
    t.chmod(0o644)
    with pytest.raises(BatchError, match="readable by others .mode 0644.; chmod 600 it"):
        ArcBackend([CE1], token_file=str(t), connect=lambda ce: Recorder(ce.name))  # type: ignore


def test_a_failed_pilot_job_keeps_why_beside_its_output(tmp_path, caplog):
    b, rec = backend(CE1)
    r = rec["ce1"]
    p = pilot(tmp_path, "p")
    (bid,) = b.submit_many([p])
    job = bid.split("/")[1]
    r.live = {job: "FAILED"}
    assert b.states() == {bid: FAILED}
    assert (p.workdir / FAILED_NAME).read_text() == "LRMS error: (-1) Job was killed by the batch system\n"
    assert "pilot p (job ce1job1) failed: LRMS error" in caplog.text
    order = [c[0] for c in r.calls if c[0] in ("failure_reason", "clean")]
    assert order == ["failure_reason", "clean"], "asked before the clean makes A-REX forget it"


def test_a_pilot_whose_files_fail_to_upload_is_killed_and_cleaned_and_the_others_run(tmp_path):
    b, rec = backend(CE1)
    r = rec["ce1"]
    put = r.put_file

    def flaky(job_id, name, data):
        if job_id == "ce1job2":
            raise ArcError("connection reset", status=None, url="x")
        put(job_id, name, data)

    r.put_file = flaky  # type: ignore[method-assign]
    out = b.submit_many([pilot(tmp_path, f"p{i}") for i in range(3)])
    assert out[0] == "ce1/ce1job1" and out[2] == "ce1/ce1job3"
    assert isinstance(out[1], BatchError) and "pilot p1's files not uploaded: connection reset" in str(out[1])
    assert ("kill", ("ce1job2",)) in r.calls and r.cleaned == ["ce1job2"], "left waiting for its files otherwise"
    assert set(b.endpoints["ce1"].jobs) == {"ce1job1", "ce1job3"}
    assert b.backoff_left("ce1") == 60, "a CE that drops uploads is backed off"


def test_the_start_up_description_names_each_ce_and_its_shapes():
    b, _ = backend(ArcCE("ce1", "https://ce1.example.org/arex", (SMALL, BIG), queue="grid"), CE2,
                   backoff_s=30, backoff_max_s=600)
    assert b.describe() == [
        "  ARC CE ce1 at https://ce1.example.org/arex, queue grid: shapes 1c/2000MB/3600s, 8c/16000MB/86400s",
        "  ARC CE ce2 at https://ce2.example.org/arex: shapes 1c/2000MB/3600s",
        "  an ARC CE refusing or silent: backed off 30 s, doubling up to 600 s; live states while it holds at most "
        "50 pilots"]


def test_an_unforeseen_error_of_the_client_backs_the_ce_off_and_stops_nothing(tmp_path, caplog):
    b, rec = backend(CE1, CE2)
    (bid,) = b.submit_many([pilot(tmp_path, "p")])

    def broken(job_ids):
        raise ValueError("I/O operation on closed file.")

    rec["ce1"].states = broken  # type: ignore[method-assign]
    assert b.states() == {bid: QUEUED}, "its pilots keep their last states"
    assert b.backoff_left("ce1") == 60 and "unforeseen error following its pilots" in caplog.text
    b, rec = backend(CE1, CE2)
    rec["ce1"].submit = lambda descriptions, dialect="xrsl": broken(())  # type: ignore[method-assign]
    assert b.submit_many([pilot(tmp_path, "q")]) == ["ce2/ce2job1"], "the next CE takes the pilot"
    assert "unforeseen error submitting 1 pilots" in caplog.text and b.backoff_left("ce1") == 60
