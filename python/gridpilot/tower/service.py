"""The tower's cycle: what it does with the jobs it holds, one phase at a time (db.py names the phases).

Each cycle, in order:
1. match: for each site, jobs from central with that site's tower token, up to match_per_cycle and max_jobs held;
   each is written to the database (MATCHED) as soon as central's answer is read, before anything else;
2. stage: job.json and the inputs into the job's directory (jobfiles.py); an input that cannot be had ends the job
   ERROR_IB (INPUT_FILES), as a pilot's stage-in does;
3. submit: per site, the STAGED jobs in bulk (one POST of up to submit_batch) to the first ARC CE of the site not
   backed off; a CE that fails the request, or refuses every job of it, is backed off (arc/backoff.py) and the next
   one tried; jobs no CE took by submit_deadline after their match go back to central (WAITING);
4. upload: job.json and the tower-fetched inputs PUT into each new ARC job's session;
5. follow: each ARC job's live state (diagnose/status) at most every poll_interval; a job the CE lost (404) is
   submitted again up to lost_resubmits times, then given back to central;
6. collect: once ARC says FINISHED, FAILED or KILLED: result.json, the outputs it lists, the pilot log downloaded;
7. publish: the pilot log to the log area; the outputs uploaded and verified on their SE against result.json, then
   registered (results.py); the states, the trace lines of result.json and the tower's, the ARC job id and the
   log's URL queued as reports;
8. heartbeats for the jobs held; central's kill commands taken (see Kills below);
9. kills carried out: the kill request put into the ARC session, ARC's own kill as the fallback;
10. reports sent in bulk (POST /api/v1/reports), per site with its token;
11. clean: ARC jobs whose reports all reached central are cleaned on their CE, their rows and directories removed.

Kills. ARC's kill cannot be relied on: A-REX's fork LRMS marks the job KILLED and signals nothing, leaving the
runner, wrapper and payload running. So central's kill is carried out by the node, through the pilot's own kill:
- a job not yet in an ARC CE (MATCHED, STAGED) is reported KILLED at once; one whose session files are not all
  uploaded (SUBMITTED) has not run (A-REX waits for them), so ARC's kill ends it, and it is reported KILLED;
- a job in the ARC CE (QUEUED): kill.request is PUT into its session (xrsl.KILL_REQUEST); the offline runner sees it
  within seconds and ends the job as a pilot ends one central kills (SIGTERM, ForcedKillTimeout, SIGKILL of the
  tree, KILLED), writing result.json; the tower follows and collects it as any ended job, so the job's trace reads
  as a pilot's kill. Only when the ARC job has not ended kill_grace beyond the job's ForcedKillTimeout after the
  request, or the CE no longer knows it, does the tower use ARC's kill and report KILLED itself;
- a job already collected (DOWNLOADED) or ended otherwise on the node before it learned of the kill: its outputs
  are not registered and it is reported KILLED (central takes no DONE after a kill request either).
Whatever the path, nothing of a killed job is registered and central ends it KILLED.

A failure of one job's step leaves that job in its phase for the next cycle (logged) and never stops the others.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from gridpilot import __version__
from gridpilot.arc.backoff import CEBackoff
from gridpilot.arc.rest import ArcError, ArcJobGone, ArcRest
from gridpilot.client import CentralClient
from gridpilot.errors import (CentralError, CentralUnreachable, ConfigError, FileAlreadyExists, GridpilotError,
                              JdlError, StageInError, StorageError)
from gridpilot.jdl import parse_job
from gridpilot.jdl.model import DEFAULT_FORCED_KILL_TIMEOUT
from gridpilot.reachability import unavailable
from gridpilot.states import JobStatus
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import digest_file
from gridpilot.storage.registry import Registry, build_registry, build_storage_element
from gridpilot.tower import db as phases
from gridpilot.tower import jobfiles, results, xrsl
from gridpilot.tower.db import HeldJob, TowerDB
from gridpilot.tower.settings import SiteConfig, TowerSettings, read_token

log = logging.getLogger("gridpilot.tower")

#: A-REX states after which the job runs no more (the session is there to download).
ARC_FINAL = ("FINISHED", "FAILED", "KILLED")
#: A-REX states in which the job's session is gone.
ARC_GONE = ("DELETED",)
#: States of `action=status` (the info provider's) after which the job runs no more: its live state is asked then.
BULK_ENDED = ("FINISHED", "FAILED", "KILLED", "WIPED", "DELETED")
#: Trace entries per report: central takes at most 1000 per append.
TRACE_CHUNK = 500
#: The pilot log's name in the log area, below <job id>/<resubmission>/.
LOG_NAME = xrsl.PILOT_LOG

ArcFactory = Callable[[str], ArcRest]


@dataclass
class CycleReport:
    """What one cycle did, for the CLI (--once --json) and the tests."""

    started: float
    matched: int = 0
    staged: int = 0
    submitted: int = 0
    given_back: int = 0
    resubmitted: int = 0
    finished: int = 0
    published: int = 0
    reports_sent: int = 0
    cleaned: int = 0
    held: int = 0
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in ("started", "matched", "staged", "submitted", "given_back",
                                              "resubmitted", "finished", "published", "reports_sent", "cleaned",
                                              "held", "errors")}


class Tower:
    def __init__(self, settings: TowerSettings, *, arc_factory: Optional[ArcFactory] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.clock = clock
        self.sites: Dict[str, SiteConfig] = {c.site: c for c in settings.site_configs()}
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.jobs_dir = Path(settings.state_dir) / "jobs"
        self.jobs_dir.mkdir(exist_ok=True)
        self.db = TowerDB(settings.database(), clock=clock)
        self.clients = {name: CentralClient(settings.central_url, read_token(site.token_file), timeout=60.0,
                                            ca_file=settings.ca_file)
                        for name, site in self.sites.items()}
        self.backoff = CEBackoff(settings.ce_backoff_base, settings.ce_backoff_max)
        self._arc_factory = arc_factory or self._new_arc
        self._arcs: Dict[str, ArcRest] = {}
        log_url = settings.log_se or (Path(settings.state_dir) / "logs").as_uri()
        if log_url.startswith("file://"):
            Path(log_url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        self.log_se: StorageElement = build_storage_element({"name": "TOWER::LOGS", "url": log_url}, "log_se")
        self.registry = Registry()
        self.close_ses: Dict[str, List[str]] = {}
        #: The tower name each site's token is bound to (its `ce`), from central at the first cycle.
        self.bound_ce: Dict[str, str] = {}
        self._heartbeats_refused = False

    # -- plumbing --

    def _new_arc(self, url: str) -> ArcRest:
        s = self.s
        token = read_token(s.arc_token_file) if s.arc_token_file else None
        return ArcRest(url, cert=s.arc_cert, key=s.arc_key, ca_dir=s.arc_ca_dir, ca_file=s.arc_ca_file, token=token,
                       timeout_s=s.arc_timeout)

    def arc(self, url: str) -> ArcRest:
        if url not in self._arcs:
            self._arcs[url] = self._arc_factory(url)
        return self._arcs[url]

    def job_dir(self, job: HeldJob) -> Path:
        return self.jobs_dir / job.dirname

    def job_client(self, job: HeldJob) -> CentralClient:
        return CentralClient(self.s.central_url, job.token, timeout=60.0, ca_file=self.s.ca_file)

    def close(self) -> None:
        for a in self._arcs.values():
            a.close()
        for c in self.clients.values():
            c.close()
        self.db.close()

    # -- the cycle --

    def cycle(self) -> CycleReport:
        report = CycleReport(started=self.clock())
        steps: List[Tuple[str, Callable[[CycleReport], None]]] = [
            ("storage", self._refresh_storage), ("match", self._match), ("stage", self._stage),
            ("submit", self._submit), ("upload", self._upload), ("follow", self._follow),
            ("publish", self._publish), ("heartbeats", self._heartbeats), ("kills", self._carry_kills),
            ("report", self._send_reports),
            ("clean", self._clean),
        ]
        for name, step in steps:
            try:
                step(report)
            except (GridpilotError, OSError, ValueError) as e:
                # One step failing (central or a CE away, a disk full) leaves its jobs in their phase for the next
                # cycle; the other steps still run.
                report.errors.append(f"{name}: {e}")
                log.warning("tower %s step failed: %s", name, e)
        report.held = len(self.db.jobs())
        return report

    def _refresh_storage(self, report: CycleReport) -> None:
        """Central's storage elements (the registry outputs go to and inputs come from), and each site's close
        ones, as central lists them to that site's token."""
        elements: Dict[str, Dict[str, Any]] = {}
        for name, client in self.clients.items():
            if name not in self.bound_ce:
                self.bound_ce[name] = str(client.whoami().get("ce") or self.s.name)
            listed = client.storage_elements()
            for e in listed:
                elements.setdefault(e["name"], {k: e[k] for k in ("name", "url") if k in e})
            self.close_ses[name] = [e["name"] for e in listed if e.get("close")]
        try:
            self.registry = build_registry(list(elements.values()), "central's storage elements")
        except ConfigError as e:
            report.errors.append(f"storage: {e}")

    # 1. match
    def _match(self, report: CycleReport) -> None:
        for name, site in self.sites.items():
            if not self.backoff.usable(site.arc_ces):
                # Every ARC CE of the site is backed off: a job matched now could only be given back.
                continue
            client = self.clients[name]
            room = min(self.s.match_per_cycle, self.s.max_jobs - self.db.count(name))
            # pilot_version is the nodes' install's (central checks MinPilotVersion against it): the site map's when
            # it says one, else the tower's own, the same release as the install laid out beside it.
            site_map = {"pilot_version": __version__, **site.site_map, "node": self.s.name}
            for _ in range(max(0, room)):
                job = client.match(site_map)
                if job is None:
                    break
                self.db.hold(name, job)
                report.matched += 1
                log.info("job %s (resubmission %s) matched for site %s", job["id"], job.get("resubmission"), name)

    # 2. stage
    def _stage(self, report: CycleReport) -> None:
        for job in self.db.jobs(phases=[phases.MATCHED]):
            try:
                self._stage_one(job)
                report.staged += 1
            except (CentralError, CentralUnreachable) as e:
                if unavailable(e):
                    raise
                self._fail_before_arc(job, JobStatus.ERROR_IB, "INPUT_FILES", f"stage-in failed: {e}")
            except StageInError as e:
                lines = list(getattr(e, "trace", None) or [])
                self._fail_before_arc(job, JobStatus.ERROR_IB, "INPUT_FILES", f"stage-in failed: {e}", lines)
            except StorageError as e:
                self._fail_before_arc(job, JobStatus.ERROR_IB, "INPUT_FILES", f"stage-in failed: {e}")
            except JdlError as e:
                self._fail_before_arc(job, JobStatus.ERROR_A, None, f"the job description cannot be read: {e}")

    def _stage_one(self, job: HeldJob) -> None:
        site = self.sites[job.site]
        jd = parse_job(job.jdl)
        d = self.job_dir(job)
        if d.exists():
            shutil.rmtree(d)  # a restart in the middle of staging: start it again from nothing
        d.mkdir(parents=True)
        with self.job_client(job) as client:
            prepared = jobfiles.prepare_inputs(jd, d, self.registry, jobfiles.JobCatalogue(client),
                                               self.close_ses.get(job.site, []), arc_staging=site.arc_staging)
        ce = self.bound_ce.get(job.site, self.s.name)
        jobfiles.write_job_json(d, jobfiles.job_json(job_id=job.job_id, resubmission=job.resubmission, jdl=job.jdl,
                                                     user=job.user, site=job.site, ce=str(ce),
                                                     inputs=prepared.entries, output_dir=job.output_dir))
        (d / "uploads.json").write_text("\n".join(prepared.uploads))
        (d / "arcstaged.json").write_text("\n".join(f"{n} {u}" for n, u in prepared.arc_staged))
        lines = [f"Tower {self.s.name} holds the job for site {job.site}; inputs: {len(prepared.uploads)} fetched "
                 f"by the tower, {len(prepared.arc_staged)} staged by the ARC CE", *prepared.trace]
        self.db.update(job, phase=phases.STAGED, reports=[self._trace_report(job, "stage", lines)])

    def _xrsl(self, job: HeldJob) -> str:
        site = self.sites[job.site]
        d = self.job_dir(job)
        uploads = [n for n in (d / "uploads.json").read_text().splitlines() if n]
        staged = [tuple(line.split(" ", 1)) for line in (d / "arcstaged.json").read_text().splitlines() if line]
        jd = parse_job(job.jdl)
        return xrsl.build(xrsl.ArcJob(
            install_path=site.install_path, job_name=f"gridpilot-{job.job_id}.{job.resubmission}",
            inputs=xrsl.session_inputs(uploads, [(s[0], s[1]) for s in staged]), cores=jd.cpu_cores,
            memory_mb=max(1, jd.memory_size >> 20),
            wall_s=jd.ttl, queue=site.queue))

    # 3. submit
    def _submit(self, report: CycleReport) -> None:
        now = self.clock()
        by_site: Dict[str, List[HeldJob]] = defaultdict(list)
        for job in self.db.jobs(phases=[phases.STAGED, phases.SUBMITTING]):
            if job.phase == phases.SUBMITTING:
                # A restart while the request was out: whether the CE made the job is unknown; submit it again.
                self.db.update(job, phase=phases.STAGED, arc_url=None, message="submission answer lost: again")
            by_site[job.site].append(job)
        for name, jobs in by_site.items():
            site = self.sites[name]
            pending = list(jobs)
            for url in self.backoff.usable(site.arc_ces):
                if not pending:
                    break
                pending = self._submit_to(url, pending, report)
            for job in pending:
                if now - job.matched_at >= self.s.submit_deadline:
                    self._give_back(job, f"no ARC CE of site {name} took the job within "
                                         f"{self.s.submit_deadline:.0f} s of its match")
                    report.given_back += 1

    def _submit_to(self, url: str, jobs: List[HeldJob], report: CycleReport) -> List[HeldJob]:
        """Submit `jobs` to one CE in batches; the jobs it did not take (refused, or the CE failed)."""
        left: List[HeldJob] = []
        for start in range(0, len(jobs), self.s.submit_batch):
            batch = jobs[start:start + self.s.submit_batch]
            texts, ready = [], []
            for job in batch:
                try:
                    texts.append(self._xrsl(job))
                    ready.append(job)
                except (ValueError, OSError) as e:
                    self._fail_before_arc(job, JobStatus.ERROR_A, None, f"no ARC job description: {e}")
            if not ready:
                continue
            for job in ready:
                self.db.update(job, phase=phases.SUBMITTING, arc_url=url)
            try:
                answers = self.arc(url).submit(texts)
            except ArcError as e:
                self.backoff.failed(url, str(e))
                for job in ready:
                    self.db.update(job, phase=phases.STAGED, arc_url=None, message=f"{url}: {e}")
                left.extend(ready)
                left.extend(j for b in range(start + self.s.submit_batch, len(jobs), self.s.submit_batch)
                            for j in jobs[b:b + self.s.submit_batch])
                return left
            refused = 0
            for job, answer in zip(ready, answers):
                if answer.id is None:
                    refused += 1
                    self.db.update(job, phase=phases.STAGED, arc_url=None,
                                   message=f"{url} refused it: {answer.code} {answer.reason}")
                    left.append(job)
                    continue
                lines = [f"Submitted to ARC CE {url} as ARC job {answer.id}"
                         + (f" (again: the CE lost the last one, {job.lost} of {self.s.lost_resubmits})"
                            if job.lost else "")]
                rep = self._trace_report(job, f"submit{job.lost}", lines)
                rep["arc_job_id"] = answer.id
                self.db.update(job, phase=phases.SUBMITTED, arc_id=answer.id, arc_state=None, next_poll=0.0,
                               message=None, reports=[rep])
                report.submitted += 1
            if refused and refused == len(ready):
                self.backoff.failed(url, f"refused all {refused} job(s) of the request")
                return left + [j for j in jobs[start + self.s.submit_batch:]]
            self.backoff.succeeded(url)
        return left

    # 4. upload
    def _upload(self, report: CycleReport) -> None:
        for job in self.db.jobs(phases=[phases.SUBMITTED]):
            assert job.arc_url and job.arc_id
            d = self.job_dir(job)
            names = [xrsl.JOB_JSON] + [n for n in (d / "uploads.json").read_text().splitlines() if n]
            try:
                arc = self.arc(job.arc_url)
                for n in names:
                    arc.put_file(job.arc_id, n, d / n)
            except ArcJobGone:
                self._lost(job, report)
                continue
            except ArcError as e:
                log.warning("job %s: upload into ARC job %s failed (next cycle again): %s", job.job_id, job.arc_id, e)
                continue
            self.db.update(job, phase=phases.QUEUED, next_poll=self.clock())

    # 5. follow, 6. collect
    def _bulk_states(self, jobs: Sequence[HeldJob]) -> Dict[str, Optional[Dict[str, str]]]:
        """Per CE: the info provider's state of each of its jobs (one action=status request); None for a CE that
        did not answer (its jobs are asked one by one)."""
        by_ce: Dict[str, List[str]] = defaultdict(list)
        for job in jobs:
            by_ce[job.arc_url or ""].append(job.arc_id or "")
        out: Dict[str, Optional[Dict[str, str]]] = {}
        for url, ids in by_ce.items():
            try:
                out[url] = {k: v.upper() for k, v in self.arc(url).states(ids).items()}
            except ArcError as e:
                log.warning("bulk status of %d job(s) on %s failed (asked one by one): %s", len(ids), url, e)
                out[url] = None
        return out

    def _follow(self, report: CycleReport) -> None:
        now = self.clock()
        due = [j for j in self.db.jobs(phases=[phases.QUEUED]) if j.next_poll <= now]
        bulk = self._bulk_states(due) if self.s.bulk_status and due else {}
        for job in due:
            assert job.arc_url and job.arc_id
            listed = bulk.get(job.arc_url)
            seen = listed.get(job.arc_id) if listed is not None else None
            if (seen is not None and seen not in BULK_ENDED and job.kill_at is None
                    and now - job.diagnosed < self.s.diagnose_interval):
                # Still on its way as far as the info provider knows: no request (and no write) of its own.
                continue
            try:
                state = self.arc(job.arc_url).diagnose_state(job.arc_id)
            except ArcJobGone:
                self._lost(job, report)
                continue
            except ArcError as e:
                log.warning("job %s: state of ARC job %s unknown: %s", job.job_id, job.arc_id, e)
                continue
            reports = []
            if state != job.arc_state:
                reports.append(self._trace_report(job, f"arc{job.lost}.{state}",
                                                  [f"ARC job {job.arc_id}: {state}"]))
            if state in ARC_GONE:
                self.db.update(job, arc_state=state, reports=reports)
                self._lost(job, report)
                continue
            if state not in ARC_FINAL:
                self.db.update(job, arc_state=state, next_poll=now + self.s.poll_interval, diagnosed=now,
                               reports=reports)
                continue
            try:
                self._collect(job, state, reports)
            except ArcJobGone:
                self._lost(job, report)
                continue
            except ArcError as e:
                log.warning("job %s: ARC job %s not collected (next cycle again): %s", job.job_id, job.arc_id, e)
                continue
            report.finished += 1

    def _collect(self, job: HeldJob, state: str, reports: List[Dict[str, Any]]) -> None:
        """Download result.json, the log and the outputs result.json lists."""
        assert job.arc_url and job.arc_id
        arc = self.arc(job.arc_url)
        d = self.job_dir(job)
        message = None
        for name in (xrsl.PILOT_LOG, xrsl.STDOUT):
            try:
                arc.download(job.arc_id, name, d / name)
            except ArcError as e:
                log.info("job %s: no %s from ARC job %s: %s", job.job_id, name, job.arc_id, e)
        try:
            data = arc.get_file(job.arc_id, xrsl.RESULT_JSON)
        except ArcJobGone:
            raise
        except ArcError as e:
            message = f"ARC job {job.arc_id} ended {state} without a result.json ({e})"
            data = None
        if data is not None:
            (d / xrsl.RESULT_JSON).write_bytes(data)
            try:
                result = results.parse_result(data, job_id=job.job_id, resubmission=job.resubmission)
                for out in result.outputs:
                    dest = d / out.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        arc.download(job.arc_id, out.name, dest)
                    except ArcError as e:
                        log.warning("job %s: output %s not downloaded: %s", job.job_id, out.name, e)
            except results.ResultError as e:
                message = f"{e}"
        self.db.update(job, phase=phases.DOWNLOADED, arc_state=state, message=message, reports=reports)

    # 7. publish
    def _publish(self, report: CycleReport) -> None:
        for job in self.db.jobs(phases=[phases.DOWNLOADED]):
            try:
                self._publish_one(job)
            except (CentralUnreachable, OSError) as e:
                # Central or the disk away: the outputs stay where they are, unregistered, until the next cycle.
                log.warning("job %s: not published yet: %s", job.job_id, e)
                report.errors.append(f"publish {job.job_id}: {e}")
                continue
            report.published += 1

    def _publish_one(self, job: HeldJob) -> None:
        """The pilot log published, the outputs verified and registered, the reports queued (see the module)."""
        d = self.job_dir(job)
        lines: List[str] = []
        log_url = self._publish_log(job, d, lines)
        reps: List[Dict[str, Any]] = []
        result: Optional[results.Result] = None
        if (d / xrsl.RESULT_JSON).exists() and job.message is None:
            result = results.parse_result((d / xrsl.RESULT_JSON).read_bytes(), job_id=job.job_id,
                                          resubmission=job.resubmission)
        killed = job.kill_at is not None
        if result is None:
            why = job.message or f"ARC job {job.arc_id} ended {job.arc_state} without a result.json"
            lines.append(f"[FATAL]: {why}" if not killed else f"killed on central's request; {why}")
            final: Tuple[str, Optional[str], Optional[int]] = ("KILLED", "KILLED", None) if killed else (
                "ERROR_E", None, None)
            reps.append(self._started(job))
        elif killed and result.final_state != "KILLED":
            # The job ended otherwise on the node before it learned of the kill: its states up to its end, then
            # KILLED (central ends a job whose kill it took KILLED, never DONE), nothing of it registered.
            reps.extend(_without_final_states(self._result_reports(job, result)))
            lines.append(f"central asked for the job to be killed ({job.kill_why}) and it ended "
                         f"{result.final_state} on the node before it learned of it: KILLED, none of its "
                         f"{len(result.outputs)} output(s) registered")
            final = ("KILLED", "KILLED", result.final_exit_code)
        else:
            reps.extend(self._result_reports(job, result))
            final = (result.final_state, result.final_kill_reason, result.final_exit_code)
            if result.final_state == "KILLED" and not killed:
                # Only a kill request ends a job KILLED on the node; the tower put none: the job's own processes
                # (the same user as the runner) wrote it. Its own end, reported as it came, and said for what it is.
                lines.append(f"the node ended the job KILLED on a {xrsl.KILL_REQUEST} the tower never put there: "
                             "the job's own processes wrote it")
            if result.final_state == "SAVING":
                with self.job_client(job) as client:
                    def register(lfn: str, size: int, adler32: str, md5: Optional[str], se: str,
                                 pfn: str) -> None:
                        client.register_file(lfn=lfn, size=size, adler32=adler32, md5=md5, se=se, pfn=pfn,
                                             job_id=job.job_id)
                    published = results.publish_outputs(result.outputs, d, self.registry,
                                                        self._output_ses(job), register,
                                                        transient=(CentralUnreachable,))
                lines.extend(published.trace)
                final = (published.state.name, None, result.final_exit_code)
        last = next((r["state"] for r in reversed(reps) if "state" in r), None)
        end: Dict[str, Any] = {"job_id": job.job_id, "resubmission": job.resubmission}
        if final[0] != last:
            end["state"] = final[0]
            end["at"] = self.clock()
            if final[1]:
                end["kill_reason"] = final[1]
            if final[2] is not None:
                end["exit_code"] = final[2]
            if final[0] != "DONE" and lines:
                end["message"] = lines[-1][:1000]
        end["trace"] = self._trace_entries(job, "publish", lines)
        if job.arc_id:
            end["arc_job_id"] = job.arc_id
        if log_url:
            end["pilot_log_url"] = log_url
        # The end state goes last: trace lines reported with it are in before the job shows as ended.
        reps.append(end)
        self.db.update(job, phase=phases.PUBLISHED, final_state=final[0], pilot_log_url=log_url, reports=reps)

    def _output_ses(self, job: HeldJob) -> List[str]:
        seen: Dict[str, str] = {}
        for n in (*self.sites[job.site].output_ses, *self.close_ses.get(job.site, []), *self.registry.names):
            seen.setdefault(n.upper(), n)
        return list(seen.values())

    def _publish_log(self, job: HeldJob, d: Path, lines: List[str]) -> Optional[str]:
        path = d / xrsl.PILOT_LOG
        if not path.exists():
            lines.append("no pilot log came back from the node")
            return None
        pfn = self.log_se.url_for(f"{job.job_id}/{job.resubmission}/{LOG_NAME}")
        try:
            try:
                self.log_se.put(path, pfn)
            except FileAlreadyExists:
                # Published before a restart: the same file, or a mismatch verify() reports (and removes).
                self.log_se.verify(pfn, digest_file(path, md5=False))
        except StorageError as e:
            lines.append(f"pilot log not published: {e}")
            return None
        url = pfn
        if self.s.log_url_base:
            url = self.s.log_url_base.rstrip("/") + "/" + pfn[len(self.log_se.url):].lstrip("/")
        lines.append(f"Pilot log: {url}")
        return url

    def _result_reports(self, job: HeldJob, result: results.Result) -> List[Dict[str, Any]]:
        """The node's states and trace as reports, in the order the node had them: the trace lines up to each state
        change (as the node wrote them, keys and all), then that state with its own time, exit code, kill reason,
        so that the job's trace reads as a pilot's would."""
        base = {"job_id": job.job_id, "resubmission": job.resubmission}
        reps: List[Dict[str, Any]] = []
        lines = sorted(result.trace, key=lambda e: e["ts"])
        i = 0

        def flush(until: float) -> None:
            nonlocal i
            chunk: List[Dict[str, Any]] = []
            while i < len(lines) and lines[i]["ts"] <= until:
                chunk.append(lines[i])
                i += 1
                if len(chunk) == TRACE_CHUNK:
                    reps.append({**base, "trace": chunk})
                    chunk = []
            if chunk:
                reps.append({**base, "trace": chunk})

        for st in result.states:
            flush(st.at)
            rep: Dict[str, Any] = {**base, "state": st.state, "at": st.at}
            if st.kill_reason:
                rep["kill_reason"] = st.kill_reason
            if st.exit_code is not None:
                rep["exit_code"] = st.exit_code
            if st.message:
                rep["message"] = st.message[:1000]
            reps.append(rep)
        flush(float("inf"))
        if job.arc_id and reps:
            reps[0]["arc_job_id"] = job.arc_id
        return reps

    # 8. heartbeats
    def _heartbeats(self, report: CycleReport) -> None:
        now = self.clock()
        due: Dict[str, List[HeldJob]] = defaultdict(list)
        for job in self.db.jobs(phases=[phases.MATCHED, phases.STAGED, phases.SUBMITTING, phases.SUBMITTED,
                                        phases.QUEUED, phases.DOWNLOADED]):
            if now - job.heartbeat >= self.s.heartbeat_interval:
                due[job.site].append(job)
        for name, jobs in due.items():
            try:
                commands = self.clients[name].heartbeats(
                    [{"job_id": j.job_id, "resubmission": j.resubmission} for j in jobs])
            except CentralError as e:
                if e.status == 403 and not self._heartbeats_refused:
                    self._heartbeats_refused = True
                    log.warning("central refuses the tower's heartbeats (%s): held jobs rely on the reports", e)
                    continue
                raise
            for j in jobs:
                self.db.update(j, heartbeat=now)
            killed = {int(c["job_id"]): str(c.get("reason") or "no reason given")[:200]
                      for c in commands if c.get("command") == "kill"}
            for j in jobs:
                if j.job_id in killed:
                    self._kill(j, killed[j.job_id])

    def _kill(self, job: HeldJob, reason: str) -> None:
        """Central wants the job ended (`reason`, its words): taken once, carried out as the module says (Kills)."""
        if job.kill_at is not None:
            return  # taken already (central says it at every heartbeat until the job ends)
        why = f"central asked for the job to be killed ({reason})"
        log.info("job %s: %s (phase %s, ARC job %s)", job.job_id, why, job.phase, job.arc_id)
        if job.phase in (phases.MATCHED, phases.STAGED, phases.SUBMITTING):
            self._killed(job, [f"{why}: it had not reached an ARC CE"])
        elif job.phase == phases.SUBMITTED:
            # A-REX waits for every file the description says the client uploads before it runs anything.
            self._arc_kill(job)
            self._killed(job, [f"{why}: ARC job {job.arc_id} killed through ARC before its session files were all "
                               "uploaded, so before anything of it ran"])
        else:  # QUEUED: it may run; DOWNLOADED: it ran, and is not published (_publish_one ends it KILLED)
            now = self.clock()
            lines = [f"{why}: "
                     + (f"the request goes into ARC job {job.arc_id}'s session ({xrsl.KILL_REQUEST}), and the node "
                        f"kills the job as a pilot does; ARC's own kill only if the ARC job has not ended within "
                        f"{self._kill_grace(job):.0f} s" if job.phase == phases.QUEUED
                        else "the job has ended on the node; none of its outputs is registered")]
            self.db.update(job, kill_at=now, kill_why=reason, reports=[self._trace_report(job, "kill", lines)])
            if job.phase == phases.QUEUED:
                self._put_kill(job)

    def _kill_grace(self, job: HeldJob) -> float:
        """How long the node has for the kill: the payload's own grace (ForcedKillTimeout) and kill_grace."""
        try:
            forced = float(parse_job(job.jdl).forced_kill_timeout)
        except JdlError:
            forced = float(DEFAULT_FORCED_KILL_TIMEOUT)
        return forced + self.s.kill_grace

    def _put_kill(self, job: HeldJob) -> None:
        """The kill request into the ARC session; the next poll of the job at once. A CE that no longer knows the
        job has nothing of it to kill: KILLED is reported. A CE away: again at the next cycle (until the grace)."""
        assert job.arc_url and job.arc_id
        text = f"{job.kill_why or 'kill requested'}, passed on by tower {self.s.name}\n"
        try:
            self.arc(job.arc_url).put_file(job.arc_id, xrsl.KILL_REQUEST, text.encode())
        except ArcJobGone:
            self._killed(job, [f"ARC CE {job.arc_url} no longer knows ARC job {job.arc_id}: nothing of it to kill"])
            return
        except ArcError as e:
            log.warning("job %s: kill request not put into ARC job %s (again next cycle): %s", job.job_id,
                        job.arc_id, e)
            return
        now = self.clock()
        self.db.update(job, kill_put=now, next_poll=min(job.next_poll, now))

    # 9. kills
    def _carry_kills(self, report: CycleReport) -> None:
        """The kills taken and not yet ended: the request put again where it did not reach the session; ARC's own
        kill for an ARC job still on after the grace."""
        now = self.clock()
        for job in self.db.jobs(phases=[phases.QUEUED]):
            if job.kill_at is None:
                continue
            if job.kill_put is None:
                self._put_kill(job)
                if job.phase != phases.QUEUED:
                    continue
            grace = self._kill_grace(job)
            if now - job.kill_at < grace:
                continue
            assert job.arc_url and job.arc_id
            state: Optional[str]
            try:
                state = self.arc(job.arc_url).diagnose_state(job.arc_id)
            except ArcJobGone:
                self._killed(job, [f"ARC CE {job.arc_url} no longer knows ARC job {job.arc_id}: nothing of it to "
                                   "kill"])
                continue
            except ArcError as e:
                state = None
                log.warning("job %s: state of ARC job %s unknown at the end of the kill's grace: %s", job.job_id,
                            job.arc_id, e)
            if state in ARC_FINAL:
                # It ended since the last poll: collected at the next follow, as any ended job.
                self.db.update(job, next_poll=0.0)
                continue
            self._arc_kill(job)
            unput = "" if job.kill_put else ", the request never reached its session"
            self._killed(job, [f"ARC job {job.arc_id} had not ended {grace:.0f} s after the kill request (ARC "
                               f"state {state or 'unknown'}{unput}): killed through ARC instead, which with a fork "
                               "LRMS may leave the payload running"])

    def _arc_kill(self, job: HeldJob) -> None:
        if job.arc_id and job.arc_url:
            try:
                self.arc(job.arc_url).kill([job.arc_id])
            except ArcError as e:
                log.warning("job %s: kill of ARC job %s failed (it is cleaned later): %s", job.job_id, job.arc_id, e)

    def _killed(self, job: HeldJob, lines: Sequence[str]) -> None:
        """The tower ends the job KILLED itself (the node's result.json will not tell): reported, then cleaned."""
        rep = self._trace_report(job, "killed", lines)
        rep.update(state="KILLED", kill_reason="KILLED", at=self.clock())
        self.db.update(job, phase=phases.PUBLISHED, final_state="KILLED",
                       kill_at=job.kill_at if job.kill_at is not None else self.clock(), reports=[rep])

    # 10. reports
    def _send_reports(self, report: CycleReport) -> None:
        while True:
            pending = self.db.pending_reports(self.s.report_batch * max(1, len(self.sites)))
            if not pending:
                return
            by_site: Dict[str, List[phases.QueuedReport]] = defaultdict(list)
            for r in pending:
                by_site[r.site].append(r)
            progressed = False
            for name, items in by_site.items():
                items = items[:self.s.report_batch]
                client = self.clients.get(name)
                if client is None:
                    self.db.sent(r.id for r in items)  # a site no longer configured: nobody to report with
                    continue
                for r, a in zip(items, self._post_reports(client, items)):
                    if not a.get("ok"):
                        # Refused for a reason repeating would not change (a state the job has left, a kill that
                        # came first): logged and dropped, so that one report cannot hold up the others.
                        log.warning("central refused a report on job %s: %s", r.job_id, a.get("error"))
                self.db.sent(r.id for r in items)
                report.reports_sent += len(items)
                progressed = True
            if not progressed:
                return

    def _post_reports(self, client: CentralClient, items: Sequence[phases.QueuedReport]) -> List[Dict[str, Any]]:
        """Central's answer for each report. A request central refuses as a whole (400: one report it cannot even
        read) is sent again one report at a time, so that only that one is refused."""
        try:
            return client.reports([r.body for r in items])
        except CentralError as e:
            if unavailable(e) or e.status >= 500 or len(items) == 1:
                if len(items) == 1 and 400 <= e.status < 500:
                    return [{"job_id": items[0].job_id, "ok": False, "error": {"message": str(e)}}]
                raise
        return [self._post_reports(client, [r])[0] for r in items]

    # 11. clean
    def _clean(self, report: CycleReport) -> None:
        by_ce: Dict[str, List[HeldJob]] = defaultdict(list)
        for job in self.db.jobs(phases=[phases.PUBLISHED, phases.GIVEN_BACK]):
            if self.db.reports_left(job):
                continue
            if job.arc_id and job.arc_url:
                by_ce[job.arc_url].append(job)
            else:
                self._forget(job)
                report.cleaned += 1
        for url, jobs in by_ce.items():
            try:
                codes = self.arc(url).clean([j.arc_id for j in jobs if j.arc_id])
            except ArcError as e:
                log.warning("clean on %s failed (next cycle again): %s", url, e)
                continue
            for j in jobs:
                code = codes.get(j.arc_id or "")
                if code is None or code < 300 or code == 404:
                    self._forget(j)
                    report.cleaned += 1

    def _forget(self, job: HeldJob) -> None:
        if not self.s.keep_finished:
            shutil.rmtree(self.job_dir(job), ignore_errors=True)
        self.db.forget(job)

    # -- endings before or outside ARC --

    def _lost(self, job: HeldJob, report: CycleReport) -> None:
        """The ARC CE does not know the job any more (404, or DELETED before the tower collected it)."""
        if job.kill_at is not None:
            self._killed(job, [f"ARC CE {job.arc_url} lost ARC job {job.arc_id} after the kill request: not "
                               "submitted again"])
        elif job.lost < self.s.lost_resubmits:
            lines = [f"ARC CE {job.arc_url} lost ARC job {job.arc_id}: submitting the job again "
                     f"({job.lost + 1} of {self.s.lost_resubmits})"]
            self.db.update(job, phase=phases.STAGED, lost=job.lost + 1, arc_id=None, arc_url=None, arc_state=None,
                           reports=[self._trace_report(job, f"lost{job.lost}", lines)])
            report.resubmitted += 1
        else:
            self._give_back(job, f"ARC CE {job.arc_url} lost ARC job {job.arc_id}, and the job was submitted "
                                 f"{self.s.lost_resubmits} time(s) again already")
            report.given_back += 1

    def _give_back(self, job: HeldJob, why: str) -> None:
        rep = self._trace_report(job, f"giveback{job.lost}", [f"Tower gives the job back: {why}"])
        rep.update(state="WAITING", at=self.clock(), message=why[:1000])
        self.db.update(job, phase=phases.GIVEN_BACK, arc_id=None, final_state="WAITING", reports=[rep])
        log.info("job %s given back to central: %s", job.job_id, why)

    def _fail_before_arc(self, job: HeldJob, state: JobStatus, kill_reason: Optional[str], why: str,
                         lines: Sequence[str] = ()) -> None:
        rep = self._trace_report(job, "fail", [*lines, f"[FATAL]: {why}"])
        rep.update(state=state.name, at=self.clock(), message=why[:1000])
        if kill_reason:
            rep["kill_reason"] = kill_reason
        self.db.update(job, phase=phases.PUBLISHED, final_state=state.name, reports=[self._started(job), rep])
        log.info("job %s ended %s before reaching ARC: %s", job.job_id, state.name, why)

    def _started(self, job: HeldJob) -> Dict[str, Any]:
        """STARTED, as a JobAgent reports it before it stages anything: the way from ASSIGNED to an error state
        (states.TRANSITIONS) when the node's own states never came back."""
        return {"job_id": job.job_id, "resubmission": job.resubmission, "state": "STARTED", "at": job.matched_at}

    # -- trace entries --

    def _trace_entries(self, job: HeldJob, step: str, lines: Iterable[str]) -> List[Dict[str, Any]]:
        """Keyed entries: the key names the run of the job, the tower's step and the line, so that a report sent
        again after a lost answer stores each line once."""
        now = self.clock()
        return [{"ts": now, "category": "trace", "text": text[:60000],
                 "key": f"tower:{job.resubmission}:{step}:{i}"} for i, text in enumerate(lines)]

    def _trace_report(self, job: HeldJob, step: str, lines: Sequence[str]) -> Dict[str, Any]:
        return {"job_id": job.job_id, "resubmission": job.resubmission,
                "trace": self._trace_entries(job, step, lines)}


def _without_final_states(reps: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The reports with the final states (ERROR_*, DONE...) left out, their trace kept: what comes after is KILLED."""
    out = []
    for r in reps:
        if "state" in r and JobStatus[r["state"]].is_final:
            r = {k: v for k, v in r.items() if k not in ("state", "at", "kill_reason", "exit_code", "message")}
            if not r.get("trace") and "arc_job_id" not in r:
                continue
        out.append(r)
    return out


__all__ = ["ARC_FINAL", "CycleReport", "Tower"]
