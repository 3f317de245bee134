"""The CE loop (`gridpilot ce`): each cycle, look at the pilots in the batch system, ask central how many waiting
jobs each resource shape could run, submit the difference within the limits, remove pilots stuck in the queue
(queued, held or suspended past max_queue_time since their submission), and report the pilot counts to central.

Counts reported: queued, running and held are what the batch system shows now (every pilot of this CE, also those
a previous CE process submitted); finished and failed count the pilots this process saw end, since it started.

Submission: one pilot at a time (mint its token, write its files, submit), or for a back end that submits in bulk
(arc: one request for many) a cycle's pilots of a shape prepared first and handed over together.

Restarts: each pilot's directory holds `pilot.json` (batch id, name, shape, submission time), written when it is
submitted and marked when it is seen to end. A new CE process reads the records of pilots not seen to end, and at
its first look at the batch system takes back those the batch system still lists for this CE: they count as on
their way for their shape, are removed when stuck, and their token files are deleted when they end. The records
of the others (ended while no CE watched) are closed and their token files deleted.

Pilot ends: the pilot's script records its runner's exit code in `pilot.exit` (script.py); when the CE sees a pilot
end it reads that file, else asks the back end for the batch job's exit status, and counts the end by
exitcodes.reason() of the code ("unknown" when neither says).

Central outages (reach.py): a call that finds no central marks it unreachable; the cycles go on watching the batch
system (pilots that end are counted, stuck ones removed) but neither probe nor submit nor report until central
answers again. Between cycles the loop asks central's health at backoff times, and runs a cycle as soon as it
answers: the counts it could not report are reported then (they are totals, so nothing is lost in between).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from gridpilot import exitcodes
from gridpilot.ce import installs, planning, script
from gridpilot.ce.backend import (FAILED, FINAL_STATES, FINISHED, HELD, PILOT_STATES, QUEUED, RUNNING, BatchBackend,
                                  PilotSubmission, Resources, write_record)
from gridpilot.ce.reach import CentralReach, unavailable
from gridpilot.ce.settings import CESettings
from gridpilot.ce.stats import CEStats
from gridpilot.client import CentralClient
from gridpilot.errors import BatchError, CentralError, CentralUnreachable

log = logging.getLogger("gridpilot.ce")

#: The record of a pilot in its directory, for the CE processes after the one that submitted it.
RECORD_NAME = "pilot.json"
#: The exit reason of a pilot whose end nobody recorded (no pilot.exit, no exit status from the batch system).
UNKNOWN_EXIT = "unknown"
#: What central takes of the ends by reason (pilots.MAX_REASONS): the most frequent, the rest summed as "other".
MAX_REPORTED_REASONS = 64


def ended_for_central(reasons: Counter[str]) -> Dict[str, int]:
    """The pilots seen to end by reason, as central bounds them: at most MAX_REPORTED_REASONS reasons."""
    if len(reasons) <= MAX_REPORTED_REASONS:
        return dict(reasons)
    top = reasons.most_common(MAX_REPORTED_REASONS - 1)
    return {**dict(top), "other": sum(reasons.values()) - sum(n for _, n in top)}


@dataclass
class Pilot:
    name: str
    batch_id: str
    shape: Resources
    directory: Path
    submitted: float
    state: str = QUEUED
    running_since: Optional[float] = None
    removed: bool = False
    #: Submitted by an earlier CE process, taken back from its record.
    adopted: bool = False
    #: Once it ended: its runner's exit code (None when unknown) and exitcodes.reason() of it.
    exit_code: Optional[int] = None
    exit_reason: str = ""
    #: The installation it runs (ce/installs.py): its path and version (None: install_path, unversioned).
    install_path: str = ""
    version: Optional[str] = None


@dataclass
class CycleReport:
    """What one cycle saw and did, for the CLI and the tests."""

    started: float
    counts: Dict[str, int] = field(default_factory=dict)
    waiting: Dict[Resources, int] = field(default_factory=dict)
    planned: Dict[Resources, int] = field(default_factory=dict)
    submitted: List[Pilot] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    #: Why each removed pilot was removed, by batch id.
    removal_reasons: Dict[str, str] = field(default_factory=dict)
    #: Pilots an earlier CE process submitted that this one took back (its first cycle only).
    adopted: List[Pilot] = field(default_factory=list)
    ended: List[Pilot] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    #: Why central was not asked or did not answer this cycle ("" when it answered).
    central_unreachable: str = ""
    #: Shapes that got no pilot because the pinned version has no installation for their arch: why, by shape.
    missing: Dict[Resources, str] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        parts = [f"pilots: {c.get(QUEUED, 0)} queued, {c.get(RUNNING, 0)} running, {c.get(HELD, 0)} held, "
                 f"{c.get(FINISHED, 0)} finished, {c.get(FAILED, 0)} failed"]
        if self.waiting:
            parts.append("waiting jobs " + ", ".join(f"{s.label()}: {n}" for s, n in sorted(self.waiting.items())))
        if self.submitted:
            parts.append(f"submitted {len(self.submitted)} (" + ", ".join(p.batch_id for p in self.submitted) + ")")
        if self.adopted:
            parts.append(f"took back {len(self.adopted)} submitted before a restart ("
                         + ", ".join(p.batch_id for p in self.adopted) + ")")
        if self.removed:
            parts.append(f"removed {len(self.removed)} stuck (" + "; ".join(
                f"{b}: {self.removal_reasons.get(b, 'stuck')}" for b in self.removed) + ")")
        if self.ended:
            reasons = Counter(p.exit_reason or UNKNOWN_EXIT for p in self.ended)
            parts.append(f"ended {len(self.ended)} (" + ", ".join(f"{k}: {n}" for k, n in sorted(reasons.items()))
                         + ")")
        if self.missing:
            parts.append("no installation for " + "; ".join(f"{s.label()} ({why})" for s, why in
                                                            sorted(self.missing.items())))
        if self.central_unreachable:
            parts.append(f"central unreachable ({self.central_unreachable}): nothing probed, submitted or reported")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Prepared:
    """A pilot ready to submit: its script's content, its installation, what the back end gets."""

    spec: script.PilotScript
    found: installs.Installation
    submission: PilotSubmission


def _short(ce: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ce.split("::")[-1] or ce)[:40]


class Factory:
    """One CE: its settings, its central client (CE token), its batch back end, and the pilots it submitted."""

    def __init__(self, settings: CESettings, client: CentralClient, backend: BatchBackend, *, site: str, ce: str,
                 clock: Callable[[], float] = time.time, reach: Optional[CentralReach] = None,
                 stats: Optional[CEStats] = None) -> None:
        self.settings = settings
        self.client = client
        self.backend = backend
        self.site, self.ce = site, ce
        self.clock = clock
        self.reach = reach or CentralReach(settings.central_url, backoff_max=settings.central_backoff_max,
                                           log_every=settings.central_down_log_interval)
        self.stats = stats or CEStats()
        self.stats.bind(site, ce, backend.name)
        self.shapes = settings.resource_shapes()
        #: The last reason each shape had no installation, so that it is logged when it changes, not every cycle.
        self._missing: Dict[Resources, str] = {}
        # Before anything is submitted: a shape this back end can never start (GPUs on a machine without) is a
        # configuration error, not a pilot failing every cycle.
        backend.check_shapes(self.shapes)
        self.limits = planning.Limits(settings.max_queued, settings.max_running, settings.per_cycle)
        self.pilot_dir = Path(settings.pilot_dir)
        # 0711 when made here, whatever the umask: the pilot users reach their own 0700 directories in it, nobody
        # lists or plants anything in it.
        if not self.pilot_dir.is_dir():
            self.pilot_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(self.pilot_dir, 0o711)
        self.pilots: Dict[str, Pilot] = {}
        self.ended: Counter[str] = Counter()
        #: Pilots seen to end, by exit reason (exitcodes.reason(), or UNKNOWN_EXIT).
        self.ended_reasons: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._prefix = f"{_short(ce)}-{os.getpid()}-{int(clock())}"
        #: Pilots of earlier CE processes, read from their records, until the first look at the batch system.
        self._previous: Optional[List[Pilot]] = None

    # -- one cycle -----------------------------------------------------------------------------------------------
    def cycle(self) -> CycleReport:
        r = CycleReport(started=self.clock())
        saw_batch = self._cycle(r)
        self.stats.count_cycle(r.counts, had_errors=bool(r.errors), saw_batch=saw_batch)
        return r

    def _cycle(self, r: CycleReport) -> bool:
        """One cycle into `r`; whether it saw the batch system."""
        if self._previous is None:
            self._previous = self._read_records()
        try:
            states = self.backend.states()
        except BatchError as e:
            # Without the queue in view, submitting could overshoot every limit: skip this cycle's submissions.
            r.errors.append(str(e))
            return False
        if self._previous:
            self._take_back(states, r)
        self._previous = []
        self._track(states, r)
        self._remove_stuck(r)
        current = Counter(st for st in states.values() if st not in FINAL_STATES)
        r.counts = {st: current.get(st, 0) for st in (QUEUED, RUNNING, HELD)}
        r.counts.update({st: self.ended.get(st, 0) for st in (FINISHED, FAILED)})
        self._check_installations(r)
        if not self.reach.due():
            r.central_unreachable = f"for {self.reach.down_for():.0f} s"
            return True
        try:
            r.waiting = {shape: int(self.client.probe(self._site_map(shape))["waiting"]) for shape in self.shapes
                         if shape not in r.missing}
            self.reach.ok()
        except (CentralError, CentralUnreachable) as e:
            if unavailable(e):
                self._lost_central(r, e)
                return True
            self.reach.ok()
            r.errors.append(f"probing central: {e}")
        if r.waiting:
            coming = Counter(p.shape for p in self.pilots.values() if self._coming(p, r.started))
            queued = r.counts[QUEUED]
            r.planned = planning.plan(r.waiting, coming, self.limits, queued=queued,
                                      in_batch=queued + r.counts[RUNNING] + r.counts[HELD])
            self._submit(r)
        r.counts[QUEUED] += len(r.submitted)
        if r.central_unreachable:  # lost while submitting
            return True
        try:
            self.client.report_pilots({k: r.counts[k] for k in PILOT_STATES}, backend=self.backend.name,
                                      ended=ended_for_central(self.ended_reasons))
            self.reach.ok()
        except (CentralError, CentralUnreachable) as e:
            if unavailable(e):
                self._lost_central(r, e)
            else:
                self.reach.ok()
                r.errors.append(f"reporting pilot counts: {e}")
        return True

    @property
    def installations(self) -> installs.Installations:
        """From the settings as they are now (cheap: the tree is read when resolving)."""
        return self.settings.installations()

    def installation(self, shape: Resources) -> installs.Installation:
        """The installation a pilot of this shape runs now (the tree is read again: it changes under the CE)."""
        return self.installations.resolve(shape.arch or None)

    def _check_installations(self, r: CycleReport) -> None:
        """Shapes whose pinned version has no installation for their arch get no pilot this cycle (never one of
        another version); the CE says so once per change of reason, and the metric shows it while it lasts."""
        for shape in self.shapes:
            try:
                self.installation(shape)
            except installs.MissingInstall as e:
                r.missing[shape] = str(e)
                if self._missing.get(shape) != str(e):
                    log.error("no pilots of shape %s: %s", shape.label(), e)
                self._missing[shape] = str(e)
                continue
            if shape in self._missing:
                log.info("shape %s has its installation again: %s", shape.label(), self.installation(shape).label())
                del self._missing[shape]
        self.stats.set_missing({shape.label(): reason for shape, reason in r.missing.items()})

    def _lost_central(self, r: CycleReport, e: BaseException) -> None:
        self.reach.failed(e)
        r.central_unreachable = e.reason if isinstance(e, CentralUnreachable) else str(e)

    def _coming(self, p: Pilot, now: float) -> bool:
        if p.state == QUEUED and not p.removed:
            return True
        return (p.state == RUNNING and p.running_since is not None
                and now - p.running_since < self.settings.startup_grace)

    def _track(self, states: Dict[str, str], r: CycleReport) -> None:
        now = r.started
        for bid, p in list(self.pilots.items()):
            st = states.get(bid)
            if st is None:
                try:
                    st = self.backend.state_of(bid)
                except (BatchError, OSError) as e:
                    log.warning("pilot %s (%s): state unknown: %s", p.name, bid, e)
                # Gone from the batch system and nobody remembers how it ended: it is not coming back.
                st = st or FINISHED
            if st == RUNNING and p.running_since is None:
                p.running_since = now
            p.state = st
            if st in FINAL_STATES:
                self.ended[st] += 1
                p.exit_code = self._exit_code(p)
                p.exit_reason = UNKNOWN_EXIT if p.exit_code is None else exitcodes.reason(p.exit_code)
                self.ended_reasons[p.exit_reason] += 1
                self.stats.count_ended(p.exit_reason)
                r.ended.append(p)
                del self.pilots[bid]
                self._close(p, st, now)

    def _exit_code(self, p: Pilot) -> Optional[int]:
        """What the pilot's script recorded, else what the batch system did, else None."""
        code = script.read_exit_file(p.directory / script.EXIT_NAME)
        if code is not None:
            return code
        try:
            return self.backend.exit_code(p.batch_id)
        except (BatchError, OSError) as e:
            log.warning("pilot %s (%s): exit status unknown: %s", p.name, p.batch_id, e)
            return None

    def _close(self, p: Pilot, state: str, now: float) -> None:
        """A pilot ended: its token file goes (the script deletes it at the end, but not when SIGKILL, a node crash
        or a cancel before it started ended it), and its record says so, so no later CE process takes it back."""
        (p.directory / script.TOKEN_NAME).unlink(missing_ok=True)
        ended: Dict[str, object] = {"ended": now, "state": state}
        if p.exit_reason:
            ended.update(exit_code=p.exit_code, exit_reason=p.exit_reason)
        try:
            write_record(p.directory / RECORD_NAME, dict(self._record(p), **ended))
        except OSError as e:
            log.warning("pilot %s: its record not closed: %s", p.name, e)

    # -- restarts --------------------------------------------------------------------------------------------------
    def _record(self, p: Pilot) -> Dict[str, object]:
        return {"name": p.name, "batch_id": p.batch_id, "backend": self.backend.name, "site": self.site,
                "ce": self.ce, "shape": p.shape.to_dict(), "submitted": p.submitted, "install_path": p.install_path,
                "version": p.version}

    def _read_records(self) -> List[Pilot]:
        """Pilots of this CE and back end that earlier CE processes submitted and did not see end; the back end is
        told of each (adopt), so that it can list them."""
        found: List[Pilot] = []
        for path in sorted(self.pilot_dir.glob(f"*/{RECORD_NAME}")):
            try:
                rec = json.loads(path.read_text())
                if rec.get("ce") != self.ce or rec.get("backend") != self.backend.name or "ended" in rec:
                    continue
                p = Pilot(str(rec["name"]), str(rec["batch_id"]), Resources.from_dict(rec["shape"]), path.parent,
                          float(rec["submitted"]), adopted=True, install_path=str(rec.get("install_path") or ""),
                          version=rec.get("version"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("pilot record %s unreadable, left alone: %s", path, e)
                continue
            if p.batch_id in self.pilots:  # submitted by this process before its first cycle
                continue
            self.backend.adopt(p.batch_id, p.directory)
            found.append(p)
        return found

    def _take_back(self, states: Dict[str, str], r: CycleReport) -> None:
        for p in self._previous or ():
            st = states.get(p.batch_id)
            if p.batch_id in self.pilots:
                continue
            if st is None or st in FINAL_STATES:
                # Ended while no CE process watched it: not counted as this process's, but cleaned up.
                self._close(p, st or "gone", r.started)
                continue
            self.pilots[p.batch_id] = p
            r.adopted.append(p)
            log.info("took back pilot %s, %s batch job %s (%s, %s), submitted by an earlier CE process", p.name,
                     self.backend.name, p.batch_id, p.shape.label(), st)

    def _remove_stuck(self, r: CycleReport) -> None:
        """Remove the pilots still waiting to run (queued, or held or suspended by the batch system or an admin)
        max_queue_time after their submission: their work goes to new pilots, and their tokens are not left
        living for a pilot that may never run (the token's life counts this wait, see pilot_token_ttl)."""
        for p in self.pilots.values():
            age = r.started - p.submitted
            if p.state not in (QUEUED, HELD) or p.removed or age <= self.settings.max_queue_time:
                continue
            reason = (f"{p.state} {age:.0f} s after its submission, past max_queue_time "
                      f"{self.settings.max_queue_time:g} s")
            log.warning("removing pilot %s (%s batch job %s): %s", p.name, self.backend.name, p.batch_id, reason)
            try:
                self.backend.remove(p.batch_id)
            except BatchError as e:
                r.errors.append(str(e))
                continue
            p.removed = True
            self.stats.count_removed()
            r.removed.append(p.batch_id)
            r.removal_reasons[p.batch_id] = reason

    def _site_map(self, shape: Resources) -> Dict[str, object]:
        sm: Dict[str, object] = dict(self.settings.site_map)
        sm.update({"site": self.site, "ce": self.ce, "cores": shape.cores, "memory_mb": shape.memory_mb,
                   "ttl": max(60, shape.wall_s - script.SLOT_TTL_MARGIN_S)})
        if shape.arch:
            # A per-arch shape probes for the jobs its pilots can run (central's broker matches the job's arch).
            sm["arch"] = shape.arch
        if shape.gpus:
            sm["gpus"] = shape.site_map_gpus()
        return sm

    def _submit(self, r: CycleReport) -> None:
        for shape, n in sorted(r.planned.items()):
            if self.backend.bulk:
                if not self.submit_bulk(shape, n, r):
                    return
                continue
            for _ in range(n):
                try:
                    r.submitted.append(self.submit_one(shape))
                except (BatchError, CentralError, CentralUnreachable, OSError) as e:
                    # One refusal says the batch system (or central) is unhappy now: the next cycle tries again.
                    if unavailable(e):
                        self._lost_central(r, e)
                    else:
                        r.errors.append(f"submitting a {shape.label()} pilot: {e}")
                    return

    def submit_bulk(self, shape: Resources, n: int, r: CycleReport) -> bool:
        """The n pilots of a shape prepared (tokens minted, files written), then handed to the back end at once;
        whether the cycle goes on with the next shape."""
        why = self.backend.unavailable(shape)
        if why is not None:  # no token minted, no file written for pilots that could go nowhere
            r.errors.append(f"submitting {n} {shape.label()} pilots: {why}")
            return True
        prepared: List[_Prepared] = []
        ok = True
        for _ in range(n):
            try:
                prepared.append(self._prepare(shape))
            except (BatchError, CentralError, CentralUnreachable, OSError) as e:
                if unavailable(e):
                    self._lost_central(r, e)
                else:
                    r.errors.append(f"preparing a {shape.label()} pilot: {e}")
                ok = False
                break
        if not prepared:
            return ok
        results = self.backend.submit_many([p.submission for p in prepared])
        for prep, result in zip(prepared, results):
            if isinstance(result, BatchError):
                (prep.submission.workdir / script.TOKEN_NAME).unlink(missing_ok=True)
                r.errors.append(f"submitting a {shape.label()} pilot: {result}")
                ok = False
                continue
            r.submitted.append(self._submitted(prep, result))
        return ok

    def submit_one(self, shape: Resources) -> Pilot:
        """Mint a token, write the pilot's files, submit it. On failure nothing of it is left but its output."""
        prep = self._prepare(shape)
        try:
            bid = self.backend.submit(prep.submission)
        except BatchError:
            (prep.submission.workdir / script.TOKEN_NAME).unlink(missing_ok=True)
            raise
        return self._submitted(prep, bid)

    def _prepare(self, shape: Resources) -> _Prepared:
        """A new pilot's name, directory, token and start-up script, ready to submit."""
        name = f"{self._prefix}-{next(self._seq)}"
        while (self.pilot_dir / name).exists():  # a CE restarted within the second, with the same pid
            name = f"{self._prefix}-{next(self._seq)}"
        directory = self.pilot_dir / name
        if self.backend.remote_files:
            # Uploaded into the directory the batch system starts the pilot in: named relative to it (script.py).
            token_file, exit_file = Path(script.TOKEN_NAME), Path(script.EXIT_NAME)
            workdir = self.settings.pilot_workdir or "work"
        else:
            token_file, exit_file = directory / script.TOKEN_NAME, directory / script.EXIT_NAME
            workdir = self.settings.pilot_workdir or str(directory / "work")
        try:
            found = self.installation(shape)
        except installs.MissingInstall as e:
            # Gone between the cycle's check and now (a CVMFS publication): nothing is minted or written.
            raise BatchError(str(e)) from None
        token = self.client.mint_pilot_token(f"pilot/{name}", ttl_s=self.settings.pilot_token_ttl(shape.wall_s))
        spec = script.PilotScript(
            name=name, central_url=self.settings.central_url, site=self.site, ce=self.ce, backend=self.backend.name,
            resources=shape, install_path=found.path, token_file=token_file,
            workdir=workdir, environment=self.settings.environment, log_level=self.settings.log_level,
            ca_file=self.settings.ca_file, exit_file=exit_file)
        path = script.write_pilot_files(directory, spec, token, self.settings.pilot_user)
        return _Prepared(spec, found, PilotSubmission(script=path, resources=shape, name=name,
                                                      output=directory / script.OUTPUT_NAME, workdir=directory))

    def _submitted(self, prep: _Prepared, bid: str) -> Pilot:
        name, shape, directory = prep.spec.name, prep.submission.resources, prep.submission.workdir
        p = Pilot(name, bid, shape, directory, self.clock(), install_path=prep.found.path,
                  version=prep.found.version)
        self.pilots[bid] = p
        self.stats.count_submitted(shape.label())
        try:
            write_record(directory / RECORD_NAME, self._record(p))
        except OSError as e:  # the pilot runs all the same; only a restarted CE would not know it
            log.warning("pilot %s: %s not written: %s", name, RECORD_NAME, e)
        log.info("submitted pilot %s as %s batch job %s (%s; gridpilot %s)", name, self.backend.name, bid,
                 shape.label(), prep.found.label())
        return p

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, once: bool = False,
            on_cycle: Optional[Callable[[CycleReport], None]] = None) -> int:
        """Cycle every cycle_interval until `stop` is set (or once); the number of cycles that had errors.
        While central is unreachable, ask it at backoff times between cycles and cycle at once when it answers."""
        bad = 0
        while not stop.is_set():
            r = self.cycle()
            bad += bool(r.errors)
            if on_cycle is not None:
                on_cycle(r)
            if once:
                break
            self._wait_for_next_cycle(stop)
        return bad

    def _wait_for_next_cycle(self, stop: threading.Event) -> None:
        next_cycle = time.monotonic() + self.settings.cycle_interval
        while True:
            left = next_cycle - time.monotonic()
            if not self.reach.down:
                stop.wait(max(0.0, left))
                return
            if stop.wait(max(0.0, min(left, self.reach.wait_s()))) or time.monotonic() >= next_cycle:
                return
            if self.reach.due() and self.central_answers():
                return

    def central_answers(self) -> bool:
        """Ask central's health (no token needed): whether it answers; the reach is told either way."""
        try:
            self.client.health()
        except (CentralError, CentralUnreachable) as e:
            if unavailable(e):
                self.reach.failed(e)
                return False
        self.reach.ok()
        return True

    def close(self) -> None:
        self.backend.close()


__all__ = ["RECORD_NAME", "UNKNOWN_EXIT", "CycleReport", "Factory", "Pilot"]
