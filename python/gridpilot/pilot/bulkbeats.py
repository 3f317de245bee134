"""The JobRunner's heartbeats and control polls for all of its jobs at once (the agents' end: pilot/runnerlink.py).

Each agent hands the runner its latest sample (a `heartbeat` event). The runner sends one POST /heartbeats for all
of its jobs every heartbeat_interval, the first at a random point of the first interval (pilots that one batch
system starts together do not beat in step), and one POST /control for all of them every kill_poll_interval; and
writes each agent its part of every answer as one line (`relay`), or that central was away, so the agent's kill path,
its outbox's outage count and its spy answers work as they do for its own heartbeats. A pilot with 8 jobs sends 1
heartbeat and 1 poll where it sent 8 of each (docs/scaling.md, "Pilots' heartbeats").

A central older than the bulk poll (404, 405) has each agent poll for itself again. A heartbeat request central
refuses for one item's sample (400 naming `heartbeats[i]...`) is sent again without that sample, so one job's bad
sample does not cost the others their heartbeat.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.reachability import UNAVAILABLE_STATUSES, busy, paced_poll, poll_wait

log = logging.getLogger("gridpilot.runner")

#: Central takes at most 1000 runs per control poll (central/control.py): more jobs are polled in several requests.
MAX_CONTROL = 1000
_ITEM = re.compile(r"\bheartbeats\[(\d+)\]")


@dataclass
class Run:
    """One job's run as its agent described it."""

    job_id: int
    resubmission: int
    sample: Optional[Dict[str, Any]] = None


class BulkBeats:
    """The heartbeats and polls of one runner's jobs. `relay(key, line)` writes an agent (by its key) one line."""

    def __init__(self, client: CentralClient, interval: float, poll_interval: float,
                 relay: Callable[[Any, Dict[str, Any]], None], *, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.client = client
        self.interval = interval
        #: As the agent's own polls: none when 0 or not shorter than the heartbeat's interval.
        self.poll_interval = poll_interval if 0 < poll_interval < interval else 0.0
        self.relay = relay
        self.clock = clock
        now = clock()
        #: The spread: the first heartbeat at a random point of the first interval, then every interval.
        self.next_beat = now + rng() * interval
        self.next_poll = now + rng() * self.poll_interval if self.poll_interval else float("inf")
        #: Control polls in a row that found central away: each doubles the wait, up to the heartbeat's interval.
        self.poll_failures = 0
        self.runs: Dict[Any, Run] = {}
        #: Requests sent, by kind (for the log at the end and the tests).
        self.sent = {"heartbeat": 0, "control": 0}

    def update(self, key: Any, ev: Dict[str, Any]) -> None:
        """An agent's `heartbeat` event: its job's run and latest sample, or (`end`) that its job's loop is over."""
        if ev.get("end"):
            self.runs.pop(key, None)
            return
        try:
            run = Run(int(ev["job_id"]), int(ev["resubmission"]),
                      ev.get("sample") if isinstance(ev.get("sample"), dict) else None)
        except (KeyError, TypeError, ValueError):
            log.warning("agent %s sent a heartbeat event without its job: %r", key, str(ev)[:200])
            return
        self.runs[key] = run

    def forget(self, key: Any) -> None:
        self.runs.pop(key, None)

    def due(self) -> Optional[float]:
        """When step() has something to do (None: no job to report on)."""
        return min(self.next_beat, self.next_poll) if self.runs else None

    def step(self) -> None:
        now = self.clock()
        if now >= self.next_beat:
            # The beat stays on its own grid: a slow request does not shift the pilot's phase within the interval.
            while self.next_beat <= now:
                self.next_beat += self.interval
            if self.runs:
                self._beat()
        if now >= self.next_poll:
            self.next_poll = now + self.poll_interval
            if self.runs:
                self._poll(now)

    def close(self) -> None:
        self.client.close()

    # -- the heartbeat ----------------------------------------------------------------------------------------
    def _beat(self) -> None:
        keys = list(self.runs)
        items = [{"job_id": r.job_id, "resubmission": r.resubmission, "sample": r.sample}
                 for r in (self.runs[k] for k in keys)]
        self.sent["heartbeat"] += 1
        for _ in range(len(items) + 1):
            try:
                answer = self.client.heartbeats_full(items)
            except CentralUnreachable as e:
                self._relay_all(keys, "heartbeat", {"outcome": "unreachable", "error": str(e)})
                return
            except CentralError as e:
                if busy(e):
                    # Central busy (overloaded, rate limited, its database slow: central/admission.py): neither an
                    # outage nor a refusal; the next heartbeat at its time, later than any Retry-After.
                    log.info("heartbeat for %s not taken, central busy: %s",
                             _jobs(self.runs[k].job_id for k in keys), e)
                    self._relay_all(keys, "heartbeat", {"outcome": "busy", "error": str(e)})
                    return
                m = _ITEM.search(e.message) if e.status == 400 else None
                i = int(m.group(1)) if m else None
                if i is not None and i < len(items) and items[i].get("sample") is not None:
                    # One job's sample central will not take: that job beats without it, the others as they were.
                    log.warning("job %s: central refused its heartbeat's sample (%s): sent without it",
                                items[i]["job_id"], e)
                    items[i] = {**items[i], "sample": None}
                    self.sent["heartbeat"] += 1
                    continue
                self._relay_all(keys, "heartbeat", {"outcome": "refused", "status": e.status, "error": str(e)})
                return
            self._relay_answer(keys, "heartbeat", answer)
            return

    # -- the control poll -------------------------------------------------------------------------------------
    def _poll(self, now: float) -> None:
        keys = list(self.runs)
        for start in range(0, len(keys), MAX_CONTROL):
            part = keys[start:start + MAX_CONTROL]
            self.sent["control"] += 1
            try:
                answer = self.client.control_many([{"job_id": self.runs[k].job_id,
                                                    "resubmission": self.runs[k].resubmission} for k in part])
            except (CentralUnreachable, CentralError) as e:
                if isinstance(e, CentralError) and e.status in (404, 405):
                    # A central older than the bulk poll: each agent polls for its job, as before.
                    log.info("central has no bulk control poll (%s): the agents poll for their jobs", e.status)
                    self.poll_interval, self.next_poll = 0.0, float("inf")
                    self._relay_all(keys, "control", {"outcome": "no_bulk"})
                    return
                if busy(e):
                    # Central busy: the next poll no sooner than its Retry-After (jittered), else as in an outage.
                    self.poll_failures += 1
                    wait = poll_wait(self.interval, self.poll_interval, self.poll_failures, e)
                    self.next_poll = now + wait
                    log.info("control poll for %s: central busy, the next in %.0f s: %s",
                             _jobs(self.runs[k].job_id for k in part), wait, e)
                elif isinstance(e, CentralUnreachable) or e.status in UNAVAILABLE_STATUSES:
                    # Central is away: the polls back off, doubling up to the heartbeat's interval, as the agents'
                    # own did, until one is answered.
                    self.poll_failures += 1
                    wait = poll_wait(self.interval, self.poll_interval, self.poll_failures, e)
                    self.next_poll = now + wait
                    log.info("control poll for %s not delivered (%d in a row), the next in %.0f s: %s",
                             _jobs(self.runs[k].job_id for k in part), self.poll_failures, wait, e)
                else:
                    log.debug("control poll refused: %s", e)
                # The agents hear from the runner all the same: it is alive, and polls.
                self._relay_all(keys, "control", {"outcome": "failed", "error": str(e)})
                return
            self.poll_failures = 0
            # Central's pace (central/pacing.py): on a large grid it asks the pilots to poll less often.
            self.next_poll = now + paced_poll(answer, self.poll_interval, self.interval)
            self._relay_answer(part, "control", answer)

    # -- to the agents ----------------------------------------------------------------------------------------
    def _relay_all(self, keys: List[Any], reply: str, fields: Dict[str, Any]) -> None:
        for k in keys:
            run = self.runs.get(k)
            if run is not None:
                self.relay(k, {"reply": reply, "job_id": run.job_id, **fields})

    def _relay_answer(self, keys: List[Any], reply: str, answer: Dict[str, Any]) -> None:
        commands: Dict[int, List[Dict[str, Any]]] = {}
        rejected: Dict[int, List[Dict[str, Any]]] = {}
        for c in answer.get("commands") or []:
            if isinstance(c, dict):
                commands.setdefault(c.get("job_id"), []).append(c)  # type: ignore[arg-type]
        for r in answer.get("rejected") or []:
            if isinstance(r, dict):
                rejected.setdefault(r.get("job_id"), []).append(r)  # type: ignore[arg-type]
        for k in keys:
            run = self.runs.get(k)
            if run is not None:
                self.relay(k, {"reply": reply, "job_id": run.job_id, "outcome": "answered",
                               "commands": commands.get(run.job_id, []), "rejected": rejected.get(run.job_id, [])})


def _jobs(ids: Iterable[int]) -> str:
    """`job 12` or `jobs 12, 13`, for the log."""
    ids = list(ids)
    return f"job {ids[0]}" if len(ids) == 1 else "jobs " + ", ".join(str(i) for i in ids)


__all__ = ["BulkBeats", "MAX_CONTROL", "Run"]
