"""arc: pilots submitted to remote ARC CEs (NorduGrid A-REX) through their REST 1.0 interface, aCT's "truepilot"
mode: ARC only starts the pilot, which then talks to central itself as from any batch system.

Submission, in bulk: the pilots of one shape go to one ARC CE in a single POST /jobs?action=new (one xRSL each,
xrsl() below). Each job names its start-up script and its agent token file as inputs the client uploads, so A-REX
holds it in PREPARING until both are PUT into its session directory; the token is in no xRSL, argv or environment,
and the CE deletes its own copy once uploaded (the pilot's only copy is then in the session directory, which A-REX
makes for the mapped user alone). The script runs in the session directory and names its files relative to it
(script.py); its stdout and its exit-code file are the job's outputs, kept in the session.

Several ARC CEs, each with its shapes (settings `arc_ces`): a shape goes to the CE offering it that holds fewest
pilots of this CE and is not backed off. A CE that refuses a submission (the POST fails, or every job of it is
refused) or does not answer a call is backed off: nothing is submitted to it and nothing asked of it for
`arc_backoff` seconds, doubled at each failure in a row up to `arc_backoff_max`, each time logged; the pilots go to
the next CE meanwhile. Its pilots keep the last states seen until it answers again.

Tracking: one bulk POST action=status per CE and cycle (the info provider's state, 40-60 s behind) and, while a CE
holds at most `arc_diagnose_max` unfinished pilots, GET diagnose/status for each (A-REX's own state, live). The live
state decides, except that A-REX says INLRMS for a job queued in its batch system as for one running there: the bulk
state tells those apart, and until it says RUNNING the pilot counts as queued. A job A-REX no longer knows (404) was
lost: the pilot counts as failed. When a pilot ends, its stdout and exit-code file are downloaded into its directory
(the CE's log area: `pilot.out`, `pilot.exit`, as the other back ends leave them), then the ARC job is cleaned.

Known weaknesses kept visible: a kill through a fork-LRMS ARC CE can leave the payload running (the pilot's token
expires all the same); the bulk status lags, so above arc_diagnose_max pilots end up to a minute late in the counts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from gridpilot import private_files
from gridpilot.arc.backoff import CEBackoff
from gridpilot.arc.rest import ArcError, ArcJobGone, ArcRest
from gridpilot.ce.backend import FAILED, FINISHED, HELD, QUEUED, RUNNING, BatchBackend, PilotSubmission, Resources
from gridpilot.ce.script import EXIT_NAME, OUTPUT_NAME, SCRIPT_NAME, TOKEN_NAME
from gridpilot.errors import BatchError

log = logging.getLogger("gridpilot.ce.arc")

#: An ARC CE's name (in the batch ids `<name>/<ARC job id>` and the logs) and the words xRSL gets from the settings.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_XRSL_WORD = re.compile(r"^[A-Za-z0-9_.:/+=-]{1,255}$")
#: An ARC job id as the REST client takes them (A-REX makes letters and digits); anything else in a record is not
#: believed.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
REST_PATH = "/rest/1.0"
#: Uploads into session directories at once, per ARC CE (the REST client keeps as many connections).
UPLOAD_THREADS = 4
#: Beside a failed pilot's output in its directory: why A-REX failed its job.
FAILED_NAME = "arc.failed"

#: A-REX's own states (diagnose/status, "PENDING:" stripped) as pilot states; INLRMS is decided by the bulk state.
_LIVE: Mapping[str, str] = {
    "ACCEPTED": QUEUED, "ACCEPTING": QUEUED, "PREPARING": QUEUED, "SUBMIT": QUEUED, "SUBMITTING": QUEUED,
    "INLRMS": RUNNING, "FINISHING": RUNNING, "CANCELING": RUNNING, "KILLING": RUNNING,
    "FINISHED": FINISHED, "FAILED": FAILED, "KILLED": FAILED, "DELETED": FAILED, "WIPED": FAILED,
}
#: The REST 1.0 states of action=status (from the info provider).
_INFO: Mapping[str, str] = {
    "ACCEPTING": QUEUED, "ACCEPTED": QUEUED, "PREPARING": QUEUED, "PREPARED": QUEUED, "SUBMITTING": QUEUED,
    "QUEUING": QUEUED, "HELD": HELD, "RUNNING": RUNNING, "EXITINGLRMS": RUNNING, "EXECUTED": RUNNING,
    "FINISHING": RUNNING, "KILLING": RUNNING, "OTHER": QUEUED,
    "FINISHED": FINISHED, "FAILED": FAILED, "KILLED": FAILED, "WIPED": FAILED, "DELETED": FAILED,
}
#: The LRMS sub-state some A-REX versions give with INLRMS ("INLRMS:Q"): queued, running, suspended, exiting.
_INLRMS: Mapping[str, str] = {"Q": QUEUED, "R": RUNNING, "S": HELD, "H": HELD, "E": RUNNING}
#: What diagnose_state answers for a job A-REX no longer knows (ArcJobGone); not an A-REX word.
GONE = "GONE"


def pilot_state(live: Optional[str], info: Optional[str]) -> Optional[str]:
    """A pilot's state from A-REX's live state and the bulk (info provider's) one, either possibly unknown (None).
    Pure. None when neither says anything; unknown words count as queued, as the Slurm back end counts them."""
    live_word = _word(live)
    info_word = _word(info)
    if live_word == GONE:
        return FAILED
    for word in (live_word, info_word):
        if word and word.startswith("INLRMS:") and word[7:] in _INLRMS:
            return _INLRMS[word[7:]]  # the LRMS's own word: exact
    live_word = live_word.split(":", 1)[0] if live_word else live_word
    info_word = info_word.split(":", 1)[0] if info_word else info_word
    if live_word and live_word != "INLRMS":
        return _LIVE.get(live_word, QUEUED)
    if live_word == "INLRMS":
        # In the ARC CE's batch system: queued there or running; only the info provider tells which.
        from_info = _INFO.get(info_word or "", QUEUED)
        return from_info if from_info in (RUNNING, HELD) else QUEUED
    if info_word:
        return _INFO.get(info_word, QUEUED)
    return None


def _word(state: Optional[str]) -> Optional[str]:
    if not state:
        return None
    word = state.strip().upper()
    return word.split(":", 1)[1] if word.startswith("PENDING:") else word


@dataclass(frozen=True)
class ArcCE:
    """One ARC CE of the configuration: its name, A-REX endpoint, queue, runtime environments, shapes."""

    name: str
    url: str
    shapes: Tuple[Resources, ...]
    queue: str = ""
    runtime_environments: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"field 'name' must be 1 to 64 letters, digits and _ . -, got {self.name!r}")
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"field 'url' must be an https URL of an A-REX endpoint (https://host:port/arex), got "
                             f"{self.url!r}")
        if self.queue and not _XRSL_WORD.match(self.queue):
            raise ValueError(f"field 'queue' must be 1 to 255 letters, digits and _ . : / + = -, got {self.queue!r}")
        for i, rte in enumerate(self.runtime_environments):
            if not isinstance(rte, str) or not _XRSL_WORD.match(rte):
                raise ValueError(f"field 'runtime_environments[{i}]' must be 1 to 255 letters, digits and "
                                 f"_ . : / + = -, got {rte!r}")
        if not self.shapes:
            raise ValueError("field 'shapes': an ARC CE takes pilots of at least one shape")

    @property
    def rest_url(self) -> str:
        """Its REST 1.0 root: the A-REX endpoint and /rest/1.0."""
        base = self.url.rstrip("/")
        return base if base.endswith(REST_PATH) else base + REST_PATH


def arc_ce_from_settings(raw: Mapping[str, Any], shapes: Sequence[Resources]) -> ArcCE:
    """One `arc_ces` item (its shapes already worked out); ValueError naming the field."""
    for key in ("name", "url"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise ValueError(f"field {key!r} is missing (an ARC CE has a name and a url)")
    rtes = raw.get("runtime_environments") or []
    if isinstance(rtes, str):
        rtes = rtes.split()
    if not isinstance(rtes, list):
        raise ValueError("field 'runtime_environments' must be a list of names")
    queue = raw.get("queue") or ""
    if not isinstance(queue, str):
        raise ValueError(f"field 'queue' must be a string, got {queue!r}")
    return ArcCE(name=raw["name"], url=raw["url"], shapes=tuple(sorted(set(shapes))), queue=queue,
                 runtime_environments=tuple(rtes))


def xrsl(pilot: PilotSubmission, ce: ArcCE) -> str:
    """The xRSL of one pilot. Pure. The start-up script and the token file are inputs uploaded by the CE (""), the
    script's stdout and stderr (one file) and its exit-code file are outputs kept in the session. Memory is per
    core, as ARC counts it; the wall time in minutes. Every value comes from the CE's own checked words."""
    r = pilot.resources
    if not _NAME.match(pilot.name):
        raise BatchError(f"pilot name {pilot.name!r} cannot go into xRSL")
    lines = [
        "&(executable=\"/bin/bash\")",
        f" (arguments=\"{SCRIPT_NAME}\")",
        f" (jobname=\"{pilot.name}\")",
        f" (inputfiles=(\"{SCRIPT_NAME}\" \"\")(\"{TOKEN_NAME}\" \"\"))",
        f" (stdout=\"{OUTPUT_NAME}\")",
        # The same file for both: ARC's job script then redirects 2>&1 (xRSL's join is not honoured through REST).
        f" (stderr=\"{OUTPUT_NAME}\")",
        f" (outputfiles=(\"{OUTPUT_NAME}\" \"\")(\"{EXIT_NAME}\" \"\"))",
        " (gmlog=\"gmlog\")",
        # Which ARC CE started it: the script names its batch job `arc:<CE>/<ARC job id>` (script.py).
        f" (environment=(\"GRIDPILOT_ARC_CE\" \"{ce.name}\"))",
        f" (count=\"{r.cores}\")",
        f" (countpernode=\"{r.cores}\")",
        f" (memory=\"{math.ceil(r.memory_mb / r.cores)}\")",
        f" (walltime=\"{r.wall_minutes}\")",
    ]
    if ce.queue:
        lines.append(f" (queue=\"{ce.queue}\")")
    if r.arch:
        lines.append(f" (architecture=\"{r.arch}\")")
    lines.extend(f" (runtimeenvironment=\"{rte}\")" for rte in ce.runtime_environments)
    return "\n".join(lines)


@dataclass
class _Job:
    job_id: str
    name: str
    #: The pilot's directory on the CE, where its output and exit file are downloaded.
    directory: Path
    state: str = QUEUED
    #: Downloaded its output already (so a failed clean does not fetch it again).
    fetched: bool = False


@dataclass
class _Endpoint:
    ce: ArcCE
    rest: Optional[ArcRest] = None
    jobs: Dict[str, _Job] = field(default_factory=dict)
    #: Jobs ended and downloaded, whose clean was refused: cleaned again next cycle.
    to_clean: List[str] = field(default_factory=list)


Connect = Callable[[ArcCE], ArcRest]


class ArcBackend(BatchBackend):
    name = "arc"
    remote_files = True
    bulk = True

    def __init__(self, ces: Sequence[ArcCE], *, cert: Optional[str] = None, key: Optional[str] = None,
                 ca_dir: Optional[str] = None, ca_file: Optional[str] = None, token_file: Optional[str] = None,
                 timeout_s: float = 60.0, backoff_s: float = 60.0, backoff_max_s: float = 1800.0,
                 diagnose_max: int = 50, clock: Callable[[], float] = time.monotonic,
                 connect: Optional[Connect] = None) -> None:
        if not ces:
            raise BatchError("the arc backend needs at least one ARC CE (arc_ces)")
        self.timeout_s = timeout_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.backoff = CEBackoff(backoff_s, backoff_max_s, clock=clock)
        self.diagnose_max = diagnose_max
        self.clock = clock
        token = _read_token(token_file) if token_file else None
        if connect is None:
            def connect(ce: ArcCE) -> ArcRest:
                return ArcRest(ce.rest_url, cert=cert, key=key, ca_dir=ca_dir, ca_file=ca_file, token=token,
                               timeout_s=timeout_s)
        self._connect = connect
        self.endpoints: Dict[str, _Endpoint] = {ce.name: _Endpoint(ce) for ce in ces}
        # Made now: a key readable by others, a missing certificate or CA is refused before anything is submitted.
        for e in self.endpoints.values():
            try:
                e.rest = self._connect(e.ce)
            except ArcError as err:
                raise BatchError(f"ARC CE {e.ce.name}: {err}") from None
        self._ended: Dict[str, str] = {}

    # -- the BatchBackend interface ------------------------------------------------------------------------------
    def check_shapes(self, shapes: Sequence[Resources]) -> None:
        for shape in shapes:
            if not any(shape in e.ce.shapes for e in self.endpoints.values()):
                raise BatchError(f"no ARC CE takes pilots of shape {shape.label()}")

    def submit(self, pilot: PilotSubmission) -> str:
        (result,) = self.submit_many([pilot])
        if isinstance(result, BatchError):
            raise result
        return result

    def submit_many(self, pilots: Sequence[PilotSubmission]) -> List[Union[str, BatchError]]:
        """The pilots of each shape in one POST to one ARC CE; in input order, each its batch id or why not."""
        results: List[Union[str, BatchError]] = [BatchError("not submitted")] * len(pilots)
        by_shape: Dict[Resources, List[int]] = {}
        for i, p in enumerate(pilots):
            by_shape.setdefault(p.resources, []).append(i)
        for shape, indices in by_shape.items():
            group = [pilots[i] for i in indices]
            for i, r in zip(indices, self._submit_shape(shape, group)):
                results[i] = r
        return results

    def states(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for e in self.endpoints.values():
            self._retry_cleans(e)
            if e.jobs and not self._backed_off(e):
                try:
                    self._refresh(e)
                except Exception as err:  # noqa: BLE001 - see _unforeseen
                    self._unforeseen(e, "following its pilots", err)
            for job_id, job in list(e.jobs.items()):
                out[f"{e.ce.name}/{job_id}"] = job.state
                if job.state in (FINISHED, FAILED):
                    del e.jobs[job_id]
                    self._ended[f"{e.ce.name}/{job_id}"] = job.state
        while len(self._ended) > 1000:
            del self._ended[next(iter(self._ended))]
        return out

    def state_of(self, batch_id: str) -> Optional[str]:
        return self._ended.get(batch_id)

    def remove(self, batch_id: str) -> None:
        e, job_id = self._split(batch_id)
        assert e.rest is not None
        try:
            codes = e.rest.kill([job_id])
        except ArcJobGone:
            return
        except ArcError as err:
            raise BatchError(f"removing pilot {batch_id}: ARC CE {e.ce.name}: {err}") from None
        code = codes.get(job_id)
        if code is not None and code >= 400 and code != 404:
            raise BatchError(f"removing pilot {batch_id}: ARC CE {e.ce.name} answered {code} to kill")

    def adopt(self, batch_id: str, workdir: Path) -> None:
        try:
            e, job_id = self._split(batch_id)
        except BatchError as err:
            log.warning("pilot %s not taken back: %s", batch_id, err)
            return
        e.jobs.setdefault(job_id, _Job(job_id, workdir.name, workdir))

    def describe(self) -> List[str]:
        lines = []
        for e in self.endpoints.values():
            extra = (f", queue {e.ce.queue}" if e.ce.queue else "") + "".join(
                f", runtime environment {rte}" for rte in e.ce.runtime_environments)
            lines.append(f"  ARC CE {e.ce.name} at {e.ce.url}{extra}: shapes "
                         + ", ".join(sh.label() for sh in e.ce.shapes))
        lines.append(f"  an ARC CE refusing or silent: backed off {self.backoff_s:g} s, doubling up to "
                     f"{self.backoff_max_s:g} s; live states while it holds at most {self.diagnose_max} pilots")
        return lines

    def close(self) -> None:
        for e in self.endpoints.values():
            if e.rest is not None:
                e.rest.close()

    def unavailable(self, shape: Resources) -> Optional[str]:
        waits = self._candidates(shape)
        if not waits or any(not self._backed_off(e) for e in waits):
            return None
        return "no ARC CE takes it now (" + "; ".join(self._backed_off_for(e) for e in waits) + ")"

    # -- submission ----------------------------------------------------------------------------------------------
    def _backed_off_for(self, e: _Endpoint) -> str:
        return f"{e.ce.name} backed off for {self.backoff_left(e.ce.name):.0f} s more"

    def _submit_shape(self, shape: Resources, group: List[PilotSubmission]) -> List[Union[str, BatchError]]:
        tried: List[str] = []
        for e in self._candidates(shape):
            if self._backed_off(e):
                tried.append(self._backed_off_for(e))
                continue
            results = self._submit_to(e, group)
            if results is not None:
                return results
            tried.append(f"{e.ce.name} refused")
        why = "; ".join(tried) or "none offers it"
        return [BatchError(f"no ARC CE takes a {shape.label()} pilot now ({why})") for _ in group]

    def _candidates(self, shape: Resources) -> List[_Endpoint]:
        """The CEs offering this shape, those holding fewest of this CE's pilots first (then as configured)."""
        offering = [e for e in self.endpoints.values() if shape in e.ce.shapes]
        return sorted(offering, key=lambda e: len(e.jobs))

    def _submit_to(self, e: _Endpoint, group: List[PilotSubmission]) -> Optional[List[Union[str, BatchError]]]:
        """Submit the group to one CE: each pilot's batch id or why it was refused; None when the CE refused or
        failed them all (it is backed off, the caller tries the next one)."""
        assert e.rest is not None
        descriptions = [xrsl(p, e.ce) for p in group]
        try:
            answers = e.rest.submit(descriptions)
        except ArcError as err:
            self._failed(e, f"submitting {len(group)} pilots: {err}")
            return None
        except Exception as err:  # noqa: BLE001 - see _unforeseen
            self._unforeseen(e, f"submitting {len(group)} pilots", err)
            return None
        accepted = [(p, a.id) for p, a in zip(group, answers) if a.id is not None]
        # A few at a time (the client keeps UPLOAD_THREADS connections): each upload is two round trips to a CE
        # that may be far away, and A-REX holds each job until its files are there.
        with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
            uploaded = dict(zip([job_id for _, job_id in accepted],
                                pool.map(lambda pj: self._upload(e, pj[0], pj[1]), accepted)))
        results: List[Union[str, BatchError]] = []
        uploads_failed = ""
        for p, a in zip(group, answers):
            if a.id is None:
                results.append(BatchError(f"ARC CE {e.ce.name} refused pilot {p.name}: {a.code} {a.reason}"))
                continue
            failed = uploaded[a.id]
            if failed is not None:
                uploads_failed = failed
                results.append(BatchError(f"ARC CE {e.ce.name}: pilot {p.name}'s files not uploaded: {failed}"))
                self._abandon(e, a.id)
                continue
            # The pilot's only copy of its token is in the session directory now.
            (p.script.parent / TOKEN_NAME).unlink(missing_ok=True)
            e.jobs[a.id] = _Job(a.id, p.name, p.workdir)
            results.append(f"{e.ce.name}/{a.id}")
        if all(isinstance(r, BatchError) for r in results):
            self._failed(e, f"every one of {len(group)} pilots refused: {results[0]}")
            return None
        if uploads_failed:
            self._failed(e, f"uploading pilot files: {uploads_failed}")
        else:
            self._answered(e)
        return results

    @staticmethod
    def _upload(e: _Endpoint, p: PilotSubmission, job_id: str) -> Optional[str]:
        """PUT the pilot's script and token file into its job's session directory; why not, or None."""
        assert e.rest is not None
        try:
            e.rest.put_file(job_id, SCRIPT_NAME, p.script)
            e.rest.put_file(job_id, TOKEN_NAME, p.script.parent / TOKEN_NAME)
        except (ArcError, OSError) as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - as _unforeseen: one upload must not end the submission of all
            log.error("ARC CE %s: unforeseen error uploading the files of job %s", e.ce.name, job_id, exc_info=err)
            return f"{type(err).__name__}: {err}"
        return None

    def _abandon(self, e: _Endpoint, job_id: str) -> None:
        """A job whose files could not be uploaded waits for them in PREPARING: kill it and clean it."""
        assert e.rest is not None
        for action in (e.rest.kill, e.rest.clean):
            try:
                action([job_id])
            except ArcError as err:
                log.warning("ARC CE %s: job %s left (its pilot files were not uploaded): %s", e.ce.name, job_id, err)
                return

    # -- tracking ------------------------------------------------------------------------------------------------
    def _refresh(self, e: _Endpoint) -> None:
        assert e.rest is not None
        ids = list(e.jobs)
        try:
            info = e.rest.states(ids)
        except ArcError as err:
            self._failed(e, f"asking the states of {len(ids)} pilots: {err}")
            return
        ask_live = ids if len(ids) <= self.diagnose_max else [i for i in ids if i not in info]
        live: Dict[str, str] = {}
        for job_id in ask_live:
            try:
                live[job_id] = e.rest.diagnose_state(job_id)
            except ArcJobGone:
                live[job_id] = GONE
            except ArcError as err:
                self._failed(e, f"asking the state of job {job_id}: {err}")
                return
        self._answered(e)
        for job_id, job in e.jobs.items():
            st = pilot_state(live.get(job_id), info.get(job_id))
            if st is None:
                continue  # neither said (not in the bulk answer, not asked live): as it was
            if live.get(job_id) == GONE:
                log.warning("ARC CE %s lost pilot %s (job %s): counted as failed", e.ce.name, job.name, job_id)
            if st in (FINISHED, FAILED) and live.get(job_id) != GONE and not self._fetch(e, job, st):
                continue  # its output could not be fetched now: it stays as it was, fetched next cycle
            job.state = st

    def _fetch(self, e: _Endpoint, job: _Job, state: str) -> bool:
        """Download an ended pilot's output and exit file into its directory (and for a failed one, why), then
        clean the ARC job; False when the CE did not answer (tried again next cycle). A file the job did not leave
        is no failure."""
        assert e.rest is not None
        if not job.fetched:
            # The session's listing first: a pilot killed outright leaves no exit file, and one GET says so where
            # a download would be a 404 and a second GET to tell a missing file from a missing job.
            try:
                present = set(e.rest.list_session(job.job_id))
            except ArcJobGone:
                present = set()
            except ArcError as err:
                self._failed(e, f"listing the session of job {job.job_id}: {err}")
                return False
            for name in (OUTPUT_NAME, EXIT_NAME):
                if name not in present:
                    log.info("ARC CE %s: pilot %s (job %s) left no %s", e.ce.name, job.name, job.job_id, name)
                    continue
                try:
                    e.rest.download(job.job_id, name, job.directory / name)
                except ArcJobGone:
                    log.info("ARC CE %s: pilot %s (job %s) gone before its %s was fetched", e.ce.name, job.name,
                             job.job_id, name)
                except ArcError as err:
                    self._failed(e, f"downloading {name} of job {job.job_id}: {err}")
                    return False
                except OSError as err:
                    log.warning("pilot %s: %s not written into %s: %s", job.name, name, job.directory, err)
            if state == FAILED:
                self._why_failed(e, job)
            job.fetched = True
        self._clean(e, job.job_id)
        return True

    def _why_failed(self, e: _Endpoint, job: _Job) -> None:
        """What A-REX says of a failed pilot job (diagnose/failed), logged and kept as FAILED_NAME beside its
        output; asked before the clean (A-REX forgets it with the job)."""
        assert e.rest is not None
        try:
            reason = e.rest.failure_reason(job.job_id)
        except ArcError as err:
            reason = f"(not known: {err})"
        log.warning("ARC CE %s: pilot %s (job %s) failed: %s", e.ce.name, job.name, job.job_id, reason)
        try:
            (job.directory / FAILED_NAME).write_text(f"{reason}\n")
        except OSError:
            pass

    def _clean(self, e: _Endpoint, job_id: str) -> None:
        assert e.rest is not None
        try:
            code = e.rest.clean([job_id]).get(job_id)
        except ArcJobGone:
            return
        except ArcError as err:
            log.warning("ARC CE %s: job %s not cleaned (tried again next cycle): %s", e.ce.name, job_id, err)
            e.to_clean.append(job_id)
            return
        if code is not None and code >= 400 and code != 404:
            log.warning("ARC CE %s: job %s not cleaned (answer %s; tried again next cycle)", e.ce.name, job_id, code)
            e.to_clean.append(job_id)

    def _retry_cleans(self, e: _Endpoint) -> None:
        if not e.to_clean or self._backed_off(e):
            return
        pending, e.to_clean = e.to_clean, []
        for job_id in pending:
            self._clean(e, job_id)

    # -- back-off ------------------------------------------------------------------------------------------------
    def _backed_off(self, e: _Endpoint) -> bool:
        return not self.backoff.available(e.ce.name)

    def _failed(self, e: _Endpoint, what: str) -> None:
        self.backoff.failed(e.ce.name, what)

    def _unforeseen(self, e: _Endpoint, what: str, err: BaseException) -> None:
        """An error the REST client should have turned into an ArcError (a library's own, from a connection in a
        state nobody foresaw): logged with its traceback, and the CE backed off as for any failure, so that one ARC
        CE's trouble neither stops the CE's loop nor its other ARC CEs."""
        log.error("ARC CE %s: unforeseen error %s", e.ce.name, what, exc_info=err)
        self._failed(e, f"{what}: {type(err).__name__}: {err}")

    def _answered(self, e: _Endpoint) -> None:
        self.backoff.succeeded(e.ce.name)

    def backoff_left(self, name: str) -> float:
        """Seconds ARC CE `name` is still backed off (0: not)."""
        return self.backoff.backed_off_for(name) or 0.0

    def _split(self, batch_id: str) -> Tuple[_Endpoint, str]:
        name, sep, job_id = batch_id.partition("/")
        if not sep or not _JOB_ID.match(job_id):
            raise BatchError(f"{batch_id!r} is not an arc batch id (<ARC CE name>/<job id>)")
        e = self.endpoints.get(name)
        if e is None:
            raise BatchError(f"pilot {batch_id}: no ARC CE {name!r} in the configuration (any more)")
        return e, job_id


def _read_token(path: str) -> str:
    """The bearer token for the ARC CEs, from a file no one but its owner may read (as the client key)."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip()
    except OSError as e:
        raise BatchError(f"arc_token_file {path}: {e.strerror}") from None
    problem = private_files.exposure(mode)
    if problem:
        raise BatchError(f"arc_token_file {path} {problem}")
    if not text:
        raise BatchError(f"arc_token_file {path} is empty")
    return text


__all__ = ["GONE", "ArcBackend", "ArcCE", "arc_ce_from_settings", "pilot_state", "xrsl"]
