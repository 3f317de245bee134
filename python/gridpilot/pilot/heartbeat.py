"""A running job's heartbeats: the JobAgent's sample of the job to central every heartbeat_interval, and what
central answers: nothing, a kill, or that it gave this run of the job up; and between two heartbeats, every
kill_poll_interval, the control poll (GET /jobs/{id}/control, central/control.py), which asks only whether central
wants the job ended, so that a user's kill takes effect within seconds rather than at the next heartbeat.

When the JobRunner sends the heartbeats in bulk (pilot/runnerlink.py, pilot/bulkbeats.py), the agent sends none
itself: it hands its sample to the runner every SAMPLE_S (a `heartbeat` event), the runner sends one heartbeat
request for all of its jobs every heartbeat_interval and one control poll for all of them every kill_poll_interval,
and writes each agent its part of the answers, which this class reads exactly as it reads its own. Should the
runner's end close, or stay silent for longer than two heartbeat intervals and a margin, the agent goes back to its
own heartbeats and polls at once (and does so from the start under a runner older than the bulk heartbeats).

Whether central answered feeds the job's outbox (pilot/outbox.py), which counts outages for its retries.

A report central refuses (pilot/outbox.py) is logged, traced and dropped, and the job goes on: if the refusal means
central gave the job up (resubmitted it, ended it), the next heartbeat is refused for the job or answered with a
kill, which ends the payload and the wrapper's waits; if central refused the agent token itself, the heartbeats are
refused whole, and its sweeper ends the job once it is silent.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import Outbox
from gridpilot.pilot.runnerlink import RunnerLink
from gridpilot.reachability import UNAVAILABLE_STATUSES, busy, paced_poll, poll_wait

#: The agent's log: heartbeats are its lines, as they were before they had a module of their own.
log = logging.getLogger("gridpilot.agent")

#: Under a runner that heartbeats in bulk, the agent hands it a fresh sample this often (or every heartbeat_interval
#: when shorter): the runner's heartbeat carries a sample at most this old.
SAMPLE_S = 15.0
#: Beyond two heartbeat intervals, how long the runner may say nothing before the agent reports on its own: the
#: runner writes every agent a line after each heartbeat and each control poll, answered or not.
SILENCE_MARGIN_S = 30.0


class Heartbeats:
    """The heartbeats of one run of one job."""

    def __init__(self, client: CentralClient, job_id: int, resubmission: int, outbox: Outbox,
                 interval: float, poll_interval: float = 0.0, link: Optional[RunnerLink] = None,
                 emit: Optional[Callable[..., None]] = None) -> None:
        self.client = client
        self.job_id = job_id
        self.resubmission = resubmission
        self.outbox = outbox
        self.interval = interval
        #: Seconds between two control polls; 0 (or not shorter than the heartbeat's): no poll, kills come with the
        #: heartbeats.
        self.poll_interval = poll_interval if 0 < poll_interval < interval else 0.0
        #: When the next one is due (time.monotonic()); the first one at once.
        self.next = 0.0
        #: When the next control poll is due (inf: none).
        self.next_poll = float("inf") if not self.poll_interval else 0.0
        #: Control polls in a row that found central away: each doubles the wait before the next.
        self.poll_failures = 0
        #: The wait between two answered polls: poll_interval, or central's pace when longer (reachability.paced_poll).
        self.poll_gap = self.poll_interval
        #: The `spy` commands of the answers since take_spies() (pilot/spyanswer.py answers them).
        self.spies: List[Dict[str, Any]] = []
        #: The runner that sends this job's heartbeats and polls in bulk (None: the agent sends its own).
        self.link = link if link is not None and link.open and emit is not None else None
        self.emit = emit
        #: Whether the runner polls for this job too (not when central has no bulk poll: the agent polls then).
        self.polled_by_runner = True
        #: When the runner last wrote (None: before the first beat).
        self.heard: Optional[float] = None
        self.silence_s = 2 * interval + SILENCE_MARGIN_S
        self.sample_every = min(interval, SAMPLE_S)

    @property
    def due(self) -> float:
        """When beat() has something to do next (time.monotonic())."""
        if self.link is not None:
            due = min(self.next, (self.heard or 0.0) + self.silence_s)
            return due if self.polled_by_runner else min(due, self.next_poll)
        return min(self.next, self.next_poll)

    def beat(self, now: float, sample: Callable[[], Dict[str, Any]]) -> List[str]:
        """Send one with `sample()` if it is due. Why central wants the job ended, one reason per refusal or kill,
        or []. Between two heartbeats, the control poll if it is due. Under a bulk runner: hand it the sample if it
        is due, and read what it relayed."""
        if self.link is not None:
            return self._beat_linked(now, sample)
        if now < self.next:
            return self._poll(now) if now >= self.next_poll else []
        self.next = now + self.interval
        sample_now = sample()
        try:
            answer = self.client.heartbeats_full([{"job_id": self.job_id, "resubmission": self.resubmission,
                                                   "sample": sample_now}])
        except CentralUnreachable as e:
            self.outbox.note_unreachable()
            log.warning("heartbeat for job %d not delivered: %s", self.job_id, e)
            return []
        except CentralError as e:
            # Central (or a gateway for it) answered: an outage as the outbox counts them, or not. Central busy
            # (overloaded, rate limited, its database slow: central/admission.py) is neither an outage nor an
            # answer: the job goes on and the next heartbeat is at its time, which is later than any Retry-After.
            if busy(e):
                log.info("heartbeat for job %d not taken, central busy: %s", self.job_id, e)
                return []
            if e.status in UNAVAILABLE_STATUSES:
                self.outbox.note_unreachable()
            elif e.status < 500:
                self.outbox.note_reachable()
            log.warning("heartbeat for job %d refused: %s", self.job_id, e)
            return []
        self.outbox.note_reachable()
        if self.poll_interval:
            # The heartbeat answered what the poll would: the next poll a whole poll gap after it, and polls
            # slowed by an outage at their pace again.
            self.next_poll, self.poll_failures = now + self.poll_gap, 0
        return self._stops(answer)

    def _poll(self, now: float) -> List[str]:
        """Ask central whether it wants the job ended. A failed poll tells the outbox nothing: the heartbeat does
        that, and reports the failure."""
        self.next_poll = now + self.poll_interval
        try:
            answer = self.client.control(self.job_id, self.resubmission)
        except (CentralUnreachable, CentralError) as e:
            if busy(e):
                # Central busy: the next poll no sooner than its Retry-After (jittered), else as after an outage.
                self.poll_failures += 1
                wait = poll_wait(self.interval, self.poll_interval, self.poll_failures, e)
                self.next_poll = now + wait
                log.info("control poll for job %d: central busy, the next in %.0f s: %s", self.job_id, wait, e)
                return []
            if isinstance(e, CentralUnreachable) or e.status in UNAVAILABLE_STATUSES:
                # Central is away. A poll into an outage may wait up to the client's timeout, and the loop that
                # waits is the one that watches the payload: the polls back off, doubling up to the heartbeat's
                # interval, until one (or a heartbeat) is answered.
                self.poll_failures += 1
                wait = poll_wait(self.interval, self.poll_interval, self.poll_failures, e)
                self.next_poll = now + wait
                log.info("control poll for job %d not delivered (%d in a row), the next in %.0f s: %s",
                         self.job_id, self.poll_failures, wait, e)
                return []
            if e.status in (404, 405):
                # A central older than the endpoint: kills come with the heartbeats, as they did.
                log.info("central has no control endpoint (%s): job %d learns kills at its heartbeats",
                         e.status, self.job_id)
                self.poll_interval, self.next_poll = 0.0, float("inf")
            else:
                log.debug("control poll for job %d refused: %s", self.job_id, e)
            return []
        self.poll_failures = 0
        # Central's pace (central/pacing.py): on a large grid it asks the pilots to poll less often.
        self.poll_gap = paced_poll(answer, self.poll_interval, self.interval)
        self.next_poll = now + self.poll_gap
        return self._stops(answer)

    def _beat_linked(self, now: float, sample: Callable[[], Dict[str, Any]]) -> List[str]:
        assert self.link is not None and self.emit is not None
        if self.heard is None:
            self.heard = now
        relayed = self.link.read()
        if relayed:
            self.heard = now
        stops: List[str] = []
        for msg in relayed:
            stops.extend(self._relayed(now, msg))
        if not self.link.open or now - self.heard > self.silence_s:
            why = ("its end of the link closed" if not self.link.open else
                   f"it said nothing for {now - self.heard:.0f} s")
            log.warning("job %d: the runner no longer relays heartbeats (%s): the agent sends its own",
                        self.job_id, why)
            self.link.close()
            self.link = None
            self.next = now
            self.next_poll = now if self.poll_interval else float("inf")
            return stops + self.beat(now, sample)
        if now >= self.next:
            self.next = now + self.sample_every
            self.emit("heartbeat", job_id=self.job_id, resubmission=self.resubmission, sample=sample())
        if not self.polled_by_runner and now >= self.next_poll:
            stops.extend(self._poll(now))
        return stops

    def _relayed(self, now: float, msg: Dict[str, Any]) -> List[str]:
        """One line of the runner: its heartbeat's or its control poll's outcome for this job."""
        if msg.get("job_id") != self.job_id:
            return []
        kind, outcome = msg.get("reply"), msg.get("outcome")
        if kind == "heartbeat":
            if outcome == "answered":
                self.outbox.note_reachable()
                return self._stops(msg)
            if outcome == "busy":
                # As for the agent's own heartbeat: central busy is neither an outage nor an answer.
                log.info("heartbeat for job %d (sent by the runner) not taken, central busy: %s", self.job_id,
                         msg.get("error"))
                return []
            status = msg.get("status")
            # As for the agent's own heartbeat: an outage as the outbox counts them, or not.
            if outcome == "unreachable" or status in UNAVAILABLE_STATUSES:
                self.outbox.note_unreachable()
            elif isinstance(status, int) and status < 500:
                self.outbox.note_reachable()
            log.warning("heartbeat for job %d (sent by the runner) %s: %s", self.job_id,
                        "not delivered" if outcome == "unreachable" else "refused", msg.get("error"))
        elif kind == "control":
            if outcome == "answered":
                return self._stops(msg)
            if outcome == "no_bulk" and self.polled_by_runner:
                # A central older than the bulk poll: the agent polls for its job, as it did.
                log.info("central has no bulk control poll: job %d polls on its own", self.job_id)
                self.polled_by_runner = False
                self.next_poll = now if self.poll_interval else float("inf")
        return []

    def end(self) -> None:
        """The job's loop is over: the runner stops heartbeating for it."""
        if self.link is not None and self.emit is not None:
            self.emit("heartbeat", job_id=self.job_id, resubmission=self.resubmission, end=True)
            self.link.close()
            self.link = None

    def take_spies(self) -> List[Dict[str, Any]]:
        """The spy commands received since the last call."""
        spies, self.spies = self.spies, []
        return spies

    def _stops(self, answer: Dict[str, Any]) -> List[str]:
        self.spies.extend(c for c in answer.get("commands") or []
                          if c.get("job_id") == self.job_id and c.get("command") == "spy")
        stops = []
        for item in answer.get("rejected") or []:
            if item.get("job_id") == self.job_id:
                # Not this agent's job any more, or not this run of it (given back and resubmitted, say): central
                # refuses its reports too, and what it still does counts for nothing, or runs beside the next run.
                stops.append(f"central gave this run of the job up (its heartbeat was refused: "
                             f"{item.get('code')}): the job is killed")
        for cmd in answer.get("commands") or []:
            if cmd.get("job_id") == self.job_id and cmd.get("command") == "kill":
                stops.append(f"kill requested by central ({cmd.get('reason') or 'no reason given'})")
        return stops
