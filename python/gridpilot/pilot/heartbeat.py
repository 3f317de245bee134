"""A running job's heartbeats: the JobAgent's sample of the job to central every heartbeat_interval, and what
central answers: nothing, a kill, or that it gave this run of the job up.

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
from gridpilot.reachability import UNAVAILABLE_STATUSES

#: The agent's log: heartbeats are its lines, as they were before they had a module of their own.
log = logging.getLogger("gridpilot.agent")


class Heartbeats:
    """The heartbeats of one run of one job."""

    def __init__(self, client: CentralClient, job_id: int, resubmission: int, outbox: Outbox,
                 interval: float) -> None:
        self.client = client
        self.job_id = job_id
        self.resubmission = resubmission
        self.outbox = outbox
        self.interval = interval
        #: When the next one is due (time.monotonic()); the first one at once.
        self.next = 0.0

    def beat(self, now: float, sample: Callable[[], Dict[str, Any]]) -> List[str]:
        """Send one with `sample()` if it is due. Why central wants the job ended, one reason per refusal or kill,
        or []."""
        if now < self.next:
            return []
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
            # Central (or a gateway for it) answered: an outage as the outbox counts them, or not.
            if e.status in UNAVAILABLE_STATUSES:
                self.outbox.note_unreachable()
            elif e.status < 500:
                self.outbox.note_reachable()
            log.warning("heartbeat for job %d refused: %s", self.job_id, e)
            return []
        self.outbox.note_reachable()
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
