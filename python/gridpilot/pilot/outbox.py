"""Reports to central, sent in order and never lost while central is away.

The agent's loop must keep monitoring the payload while central is unreachable, so sending never blocks it: every
state change and trace line is queued here and `flush()` sends what it can, oldest first, stopping at the first one
central cannot take. A state change is never overtaken by a later trace line or state.

A report whose answer is lost (central killed after it committed, a dropped connection) is sent again, so each
must be safe to repeat: central takes a repeated state report as a no-op, and every trace line carries a key,
`<key_prefix><n>` with n counting this outbox's lines, that central stores once per job.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from gridpilot.errors import CentralError, CentralUnreachable

log = logging.getLogger(__name__)


@dataclass
class Report:
    kind: str  # "status" or "trace"
    body: Dict[str, Any]
    attempts: int = 0


@dataclass
class Outbox:
    """Queue of reports for one job. `send` does the HTTP call for one report; it raises CentralUnreachable to
    mean "try again later" and CentralError for an answer that retrying cannot change."""

    send: Callable[[Report], None]
    #: Unique to this run of the job (the agent: resubmission and a random part); the trace lines' keys start with it.
    key_prefix: str = ""
    #: Who the log lines are about ("job 12").
    name: str = "reports"
    clock: Callable[[], float] = time.monotonic
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    queue: Deque[Report] = field(default_factory=deque)
    rejected: List[tuple] = field(default_factory=list)
    unreachable_since: Optional[float] = None
    _next_try: float = 0.0
    _delay: float = 0.0
    _keys: int = 0

    def status(self, **body: Any) -> None:
        self.queue.append(Report("status", body))

    def trace(self, category: str, text: str, ts: Optional[float] = None) -> None:
        # Trace lines that queue up behind each other are sent as one request.
        entry = self._entry(category, text, ts)
        if self.queue and self.queue[-1].kind == "trace" and self.queue[-1].attempts == 0 and len(self.queue[-1].body["entries"]) < 500:
            self.queue[-1].body["entries"].append(entry)
        else:
            self.queue.append(Report("trace", {"entries": [entry]}))

    def _entry(self, category: str, text: str, ts: Optional[float] = None) -> Dict[str, Any]:
        self._keys += 1
        return {"ts": time.time() if ts is None else ts, "category": category, "text": text,
                "key": f"{self.key_prefix}{self._keys}"}

    def flush(self, *, force: bool = False) -> bool:
        """Send what can be sent now, in order. True when the queue is empty afterwards."""
        now = self.clock()
        if not force and now < self._next_try:
            return not self.queue
        while self.queue:
            report = self.queue[0]
            report.attempts += 1
            try:
                self.send(report)
            except CentralUnreachable as e:
                if self.unreachable_since is None:
                    self.unreachable_since = now
                    log.warning("%s: central unreachable, keeping %d report(s): %s", self.name, len(self.queue), e)
                self._delay = min(self.backoff_max_s, max(self.backoff_s, self._delay * 2))
                self._next_try = now + self._delay
                return False
            except CentralError as e:
                # Central answered and refused (e.g. 409 for a transition it will never accept): retrying cannot
                # help, and holding it back would block everything after it.
                log.error("%s: central refused %s %s: %s", self.name, report.kind, report.body, e)
                self.rejected.append((report, str(e)))
            self.queue.popleft()
            self._delay = 0.0
            if self.unreachable_since is not None:
                # Central answers again: the outage goes out next, ahead of the rest of what it held back.
                self._queue_outage(now)
        return True

    @property
    def next_try(self) -> float:
        """When flush() will try again (the clock's time); 0 when it may try now."""
        return self._next_try

    def note_unreachable(self) -> None:
        """Another call to central (a heartbeat) failed: the outage started then, not at the next report."""
        if self.unreachable_since is None:
            self.unreachable_since = self.clock()

    def note_reachable(self) -> None:
        """Another call to central got an answer: an outage is over even when no report was waiting."""
        if self.unreachable_since is not None:
            self._queue_outage(self.clock())
            self._next_try = 0.0

    def _queue_outage(self, now: float) -> None:
        down = now - (self.unreachable_since or now)
        self.unreachable_since = None
        self._delay = 0.0
        # ALICE's pilot reports an outage once central answers again, so the job's trace shows the gap.
        text = f"errorConnecting: central was unreachable for {down:.0f} s"
        # Logged like the agent's own trace lines ("job 12: ..."), so the log holds every line the trace should.
        log.info("%s: %s", self.name, text)
        self.queue.appendleft(Report("trace", {"entries": [self._entry("trace", text)]}))

    def drain(self, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Flush until empty or `timeout_s` passes (at the end of a job). True when everything was delivered."""
        deadline = self.clock() + timeout_s
        while not self.flush(force=True):
            if self.clock() >= deadline:
                return False
            sleep(min(self._delay or self.backoff_s, max(0.0, deadline - self.clock())))
        return True
