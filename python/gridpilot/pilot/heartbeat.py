"""A running job's heartbeats: the JobAgent's sample of the job to central every heartbeat_interval, and what
central answers: nothing, a kill, or that it gave this run of the job up; and between two heartbeats, every
kill_poll_interval, the control poll (GET /jobs/{id}/control, central/control.py), which asks only whether central
wants the job ended, so that a user's kill takes effect within seconds rather than at the next heartbeat.

Whether central answered feeds the job's outbox (pilot/outbox.py), which counts outages for its retries.

A report central refuses (pilot/outbox.py) is logged, traced and dropped, and the job goes on: if the refusal means
central gave the job up (resubmitted it, ended it), the next heartbeat is refused for the job or answered with a
kill, which ends the payload and the wrapper's waits; if central refused the agent token itself, the heartbeats are
refused whole, and its sweeper ends the job once it is silent.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import Outbox
from gridpilot.reachability import UNAVAILABLE_STATUSES, busy, retry_after_delay

#: The agent's log: heartbeats are its lines, as they were before they had a module of their own.
log = logging.getLogger("gridpilot.agent")


class Heartbeats:
    """The heartbeats of one run of one job."""

    def __init__(self, client: CentralClient, job_id: int, resubmission: int, outbox: Outbox,
                 interval: float, poll_interval: float = 0.0) -> None:
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
        #: The `spy` commands of the answers since take_spies() (pilot/spyanswer.py answers them).
        self.spies: List[Dict[str, Any]] = []

    @property
    def due(self) -> float:
        """When beat() has something to do next (time.monotonic())."""
        return min(self.next, self.next_poll)

    def beat(self, now: float, sample: Callable[[], Dict[str, Any]]) -> List[str]:
        """Send one with `sample()` if it is due. Why central wants the job ended, one reason per refusal or kill,
        or []. Between two heartbeats, the control poll if it is due."""
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
            # The heartbeat answered what the poll would: the next poll a whole poll interval after it, and polls
            # slowed by an outage at their pace again.
            self.next_poll, self.poll_failures = now + self.poll_interval, 0
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
                wait = min(self.interval, self.poll_interval * 2 ** min(self.poll_failures, 30))
                if isinstance(e, CentralError) and e.retry_after is not None:
                    wait = max(wait, retry_after_delay(e.retry_after))
                self.next_poll = now + wait
                log.info("control poll for job %d: central busy, the next in %.0f s: %s", self.job_id, wait, e)
                return []
            if isinstance(e, CentralUnreachable) or e.status in UNAVAILABLE_STATUSES:
                # Central is away. A poll into an outage may wait up to the client's timeout, and the loop that
                # waits is the one that watches the payload: the polls back off, doubling up to the heartbeat's
                # interval, until one (or a heartbeat) is answered.
                self.poll_failures += 1
                wait = min(self.interval, self.poll_interval * 2 ** min(self.poll_failures, 30))
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
        return self._stops(answer)

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
