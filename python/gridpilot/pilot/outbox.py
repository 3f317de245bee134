"""Reports to central, sent in order and never lost while central is away or failing.

The agent's loop must keep monitoring the payload while central is unreachable, so sending never blocks it: every
state change and trace line is queued here and `flush()` sends what it can, oldest first, stopping at the first one
central cannot take now. A state change is never overtaken by a later trace line or state.

A report whose answer is lost (central killed after it committed, a dropped connection) is sent again, so each
must be safe to repeat: central takes a repeated state report as a no-op, and every trace line carries a key,
`<key_prefix><n>` with n counting this outbox's lines, that central stores once per job.

What an answer means for the report at the head of the queue:
- none (central unreachable), or 502/503/504 (a gateway answering for a central that is not there): central is
  away. The report waits, retried with capped, jittered backoff; once central answers again, an
  `errorConnecting: central was unreachable for N s` line dated when the outage began goes out first.
- 503 overloaded or database_unavailable, 429 rate_limited (central/admission.py): central is there but busy. The
  report waits what its Retry-After says (plus jitter) and is sent again; this is no outage (no errorConnecting line,
  nothing counted against the node) and no failure of the report (never dropped for it).
- another 5xx (or 408, 429): central failed on the request, which it may take next time: retried the same way.
  Only a report central keeps failing on (POISON_AFTER times) while it answers the agent's other calls (its
  heartbeats) is taken as refused, and then as little of it as can be found: a batch is halved until the line
  central fails on is alone, a state report loses its message and resources first. A central bug must not hold
  back every report after it for the rest of the job.
- a 4xx: refused; sending it again cannot help. Only what central named is dropped: the trace entry `entries[i]`
  (or "trace entry i") of a batch, the rest sent again; an optional field of a state report (message, resources,
  at, exit_code), the state sent again without it. A batch refused without a name is halved until the bad entry
  is alone. Anything else central refused (401, 403, 404, 409: the job is no longer this agent's to report on) is
  dropped whole. Each drop is logged here and followed by a trace line saying what was dropped and why (which
  central may refuse too: then only the log keeps it). Nothing after a refused report is ever dropped with it.

Coalescing (`hold_s`, the agent's COALESCE_S): trace lines that are not urgent wait up to hold_s (or until
hold_lines of them wait) so that they go as one request instead of one each; a state report or an urgent line
(a kill, a broken limit) sends everything queued before it at once, in order. The lines keep their keys and
timestamps, so holding them changes neither what central stores nor the at-least-once delivery.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.reachability import UNAVAILABLE_STATUSES, Backoff, busy, retry_after_delay

log = logging.getLogger(__name__)

#: 4xx answers that are not refusals: try again later.
RETRY_LATER = frozenset({408, 425, 429})
#: Times central may fail (5xx) on one report, while answering the agent's other calls, before it counts as refused.
POISON_AFTER = 10
#: State report fields central may refuse without the state change itself being wrong: sent again without them.
OPTIONAL_STATUS_FIELDS = ("message", "resources", "at", "exit_code")
#: A trace batch holds at most this many entries (central takes up to 1000 per request).
MAX_BATCH = 500
#: The agent's coalescing of trace lines that are not urgent: held at most this long, or until this many wait.
COALESCE_S = 5.0
COALESCE_LINES = 100

# How central names a trace entry: "entries[3].text ..." (bounded fields), "trace entry 3: ..." (earlier centrals).
_ENTRY = re.compile(r"\bentries\[(\d+)\]|\btrace entry (\d+)\b")


def _named_status_field(message: str) -> Optional[str]:
    """The optional state report field a refusal names: quoted ('message'), after "field", or leading the message
    (resources.cpu: ...)."""
    for name in OPTIONAL_STATUS_FIELDS:
        if re.search(rf"'{name}'|\bfield {name}\b|^{name}(?=[.\[:])", message):
            return name
    return None


def _excerpt(text: Any, n: int = 80) -> str:
    """A short, printable rendering of a value for a log or trace line (repr escapes NULs and control codes)."""
    r = repr(text)
    return r if len(r) <= n else r[: n - 3] + "..."


@dataclass
class Report:
    kind: str  # "status" or "trace"
    body: Dict[str, Any]
    attempts: int = 0
    #: 5xx answers in a row, and calls central answered meanwhile (heartbeats): a report central keeps failing on.
    server_errors: int = 0
    answered_meanwhile: int = 0
    #: This trace line says what was dropped: if it is refused too, no line is made about it.
    is_drop_note: bool = False


def sender(client: CentralClient, job_id: int, resubmission: int) -> Callable[[Report], None]:
    """The `send` of one run of a job: each report as one call to central, on a client that does not retry by itself
    (the outbox does)."""

    def send(report: Report) -> None:
        if report.kind == "status":
            client.set_status(job_id, resubmission=resubmission, **report.body)
        else:
            client.append_trace(job_id, report.body["entries"])

    return send


@dataclass
class Outbox:
    """Queue of reports for one job. `send` does the HTTP call for one report; it raises CentralUnreachable when
    central did not answer and CentralError when it answered with an error (see the module's doc)."""

    send: Callable[[Report], None]
    #: Unique to this run of the job (the agent: resubmission and a random part); the trace lines' keys start with it.
    key_prefix: str = ""
    #: Who the log lines are about ("job 12").
    name: str = "reports"
    clock: Callable[[], float] = time.monotonic
    #: The time of day, for the trace lines' timestamps.
    wall: Callable[[], float] = time.time
    backoff_s: float = 1.0
    #: As the CE's and the wrapper's waits: a job that ended during an outage (its agent no longer heartbeats, it only
    #: drains this queue) has its final reports in within this long of central's return.
    backoff_max_s: float = 15.0
    #: The backoff's jitter (reachability.Backoff); a test fixes it.
    rng: Optional[Callable[[], float]] = None
    queue: Deque[Report] = field(default_factory=deque)
    rejected: List[tuple] = field(default_factory=list)
    unreachable_since: Optional[float] = None
    #: The time of day the outage began: the timestamp of its errorConnecting line.
    unreachable_since_wall: Optional[float] = None
    #: Called with the outage's length when central answers again (the agent tells its runner: a node failure).
    on_outage: Optional[Callable[[float], None]] = None
    _next_try: float = 0.0
    _delay: float = 0.0
    _keys: int = 0
    _central_busy: bool = False
    #: Trace lines that are not urgent wait up to this long (0: none wait), or until hold_lines of them do.
    hold_s: float = 0.0
    hold_lines: int = COALESCE_LINES
    #: When (clock) the oldest line still held was queued, and whether the queue holds something urgent.
    _held_since: Optional[float] = None
    _urgent: bool = False
    _held: int = 0
    _backoff: Optional[Backoff] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._backoff = Backoff(self.backoff_s, self.backoff_max_s, *(() if self.rng is None else (self.rng,)))

    def status(self, **body: Any) -> None:
        self.queue.append(Report("status", body))
        self._urgent = True

    def trace(self, category: str, text: str, ts: Optional[float] = None, urgent: bool = False) -> None:
        # Trace lines that queue up behind each other are sent as one request.
        if urgent:
            self._urgent = True
        elif self._held_since is None:
            self._held_since = self.clock()
        self._held += 1
        entry = self._entry(category, text, ts)
        last = self.queue[-1] if self.queue else None
        if (last is not None and last.kind == "trace" and last.attempts == 0 and not last.is_drop_note
                and len(last.body["entries"]) < MAX_BATCH):
            last.body["entries"].append(entry)
        else:
            self.queue.append(Report("trace", {"entries": [entry]}))

    def _entry(self, category: str, text: str, ts: Optional[float] = None) -> Dict[str, Any]:
        self._keys += 1
        return {"ts": self.wall() if ts is None else ts, "category": category, "text": text,
                "key": f"{self.key_prefix}{self._keys}"}

    def _holding(self, now: float) -> bool:
        """Whether what is queued is only trace lines that may wait longer (coalescing)."""
        return (self.hold_s > 0 and not self._urgent and self._held_since is not None
                and now < self._held_since + self.hold_s and self._held < self.hold_lines)

    def flush(self, *, force: bool = False) -> bool:
        """Send what can be sent now, in order. True when the queue is empty afterwards. `force`: now, whatever
        the backoff or the coalescing says."""
        now = self.clock()
        if not force and (now < self._next_try or self._holding(now)):
            return not self.queue
        # Everything queued now goes; what central cannot take now goes at the next try, without being held again.
        self._urgent, self._held_since, self._held = True, None, 0
        while self.queue:
            report = self.queue[0]
            report.attempts += 1
            try:
                self.send(report)
            except CentralUnreachable as e:
                self._away(now, str(e))
                return False
            except CentralError as e:
                if busy(e):
                    self._busy(now, e)
                    return False
                if e.status in UNAVAILABLE_STATUSES:
                    self._away(now, str(e))
                    return False
                if e.status >= 500 or e.status in RETRY_LATER:
                    if not self._failed_on(report, e):
                        self._back_off(now)
                        return False
                    # Central keeps failing on this one report while it answers everything else: a refusal.
                self._refused(report, e)
                self._answered(now)
                continue
            self.queue.popleft()
            self._answered(now)
        self._urgent = False
        return True

    @property
    def next_try(self) -> float:
        """When flush() will try again (the clock's time); 0 when it may try now."""
        if self._holding(self.clock()):
            assert self._held_since is not None
            return max(self._next_try, self._held_since + self.hold_s)
        return self._next_try

    def note_unreachable(self) -> None:
        """Another call to central (a heartbeat) failed: the outage started then, not at the next report."""
        if self.unreachable_since is None:
            self.unreachable_since = self.clock()
            self.unreachable_since_wall = self.wall()

    def note_reachable(self) -> None:
        """Another call to central got an answer: an outage is over even when no report was waiting, and a report
        central failed on was not failed for want of a central."""
        if self.queue and self.queue[0].server_errors:
            self.queue[0].answered_meanwhile += 1
        if self._central_busy:
            # Central took that call: it has room again, sooner than the Retry-After it gave (a guess) said.
            self._central_busy = False
            self._next_try = 0.0
        if self.unreachable_since is not None:
            self._queue_outage(self.clock())
            self._next_try = 0.0

    # -- what an answer means -------------------------------------------------------------------------------------
    def _busy(self, now: float, e: CentralError) -> None:
        """Central answered that it is busy: wait its Retry-After (jittered; the backoff's first step without one)."""
        if self.unreachable_since is not None:
            self._queue_outage(now)  # it answers again: whatever outage there was is over
        if not self._central_busy:
            log.info("%s: central busy, keeping %d report(s): %s", self.name, len(self.queue), e)
        self._central_busy = True
        after = e.retry_after if e.retry_after is not None else self.backoff_s
        self._delay = retry_after_delay(after, *(() if self.rng is None else (self.rng,)))
        self._next_try = now + self._delay

    def _away(self, now: float, error: str) -> None:
        if self.unreachable_since is None:
            self.note_unreachable()
            log.warning("%s: central unreachable, keeping %d report(s): %s", self.name, len(self.queue), error)
        self._back_off(now)

    def _back_off(self, now: float) -> None:
        assert self._backoff is not None
        self._delay = self._backoff.next()
        self._next_try = now + self._delay

    def _answered(self, now: float) -> None:
        assert self._backoff is not None
        self._central_busy = False
        self._backoff.reset()
        self._delay = 0.0
        if self.unreachable_since is not None:
            # Central answers again: the outage goes out next, ahead of the rest of what it held back.
            self._queue_outage(now)

    def _failed_on(self, report: Report, e: CentralError) -> bool:
        """Count a 5xx on `report`; True when it has become a refusal (POISON_AFTER of them, with other calls
        answered meanwhile)."""
        report.server_errors += 1
        if report.server_errors == 1:
            log.warning("%s: central failed on the %s report (%s): retried with backoff", self.name, report.kind, e)
        if self.unreachable_since is not None:
            # Central answered, if with an error: whatever outage there was is over.
            self._queue_outage(self.clock())
        return report.server_errors >= POISON_AFTER and report.answered_meanwhile > 0

    def _refused(self, report: Report, e: CentralError) -> None:
        """Drop what central refused in the report at the head of the queue: the entry or field it named (the rest
        stays at the head, to be sent again), else the whole report."""
        failing = e.status >= 500 or e.status in RETRY_LATER
        history = (report.server_errors, report.answered_meanwhile)
        report.server_errors = report.answered_meanwhile = 0
        if report.kind == "trace" and len(report.body["entries"]) > 1:
            entries = report.body["entries"]
            m = None if failing else _ENTRY.search(e.message)
            i = int(m.group(1) or m.group(2)) if m else None
            if i is not None and i < len(entries):
                self._dropped(f"trace line {entries[i].get('key')} ({_excerpt(entries[i].get('text'))})", e,
                              report.is_drop_note)
                del entries[i]
                return
            if i is None and e.status not in (401, 403, 404, 409):
                # Refused (or failed on) for something in the batch it did not name: halves, until the bad entry
                # is alone. A half central fails on again counts as refused at once: it has the batch's history.
                halves = (entries[: len(entries) // 2], entries[len(entries) // 2:])
                self.queue.popleft()
                for part in reversed(halves):
                    half = Report("trace", {"entries": part}, is_drop_note=report.is_drop_note)
                    if failing:
                        half.server_errors, half.answered_meanwhile = POISON_AFTER - 1, history[1]
                    self.queue.appendleft(half)
                return
        if report.kind == "status":
            if e.status == 400:
                names = [n for n in [_named_status_field(e.message)] if n is not None and n in report.body]
            else:
                # Central fails on this state report alone: what it carries besides the state goes first.
                names = [n for n in ("message", "resources") if failing and n in report.body]
            if names:
                self._dropped(f"the {' and '.join(names)} of the {report.body.get('state')} report "
                              f"({', '.join(_excerpt(report.body[n]) for n in names)}); the report is sent again "
                              f"without {'them' if len(names) > 1 else 'it'}", e, False)
                for n in names:
                    del report.body[n]
                return
        self.queue.popleft()
        if report.kind == "status":
            what = f"the {report.body.get('state')} report"
        else:
            count = len(report.body["entries"])
            first = report.body["entries"][0]
            what = (f"trace line {first.get('key')} ({_excerpt(first.get('text'))})" if count == 1 else
                    f"{count} trace lines ({first.get('key')} to {report.body['entries'][-1].get('key')})")
        self._dropped(what, e, report.is_drop_note)
        self.rejected.append((report, str(e)))

    def _dropped(self, what: str, e: CentralError, quietly: bool) -> None:
        """Log what was dropped and why; unless it was itself such a line, queue a trace line that says so."""
        why = str(e) if len(str(e)) <= 500 else str(e)[:497] + "..."
        log.error("%s: central refused %s: dropped: %s", self.name, what, why)
        if quietly:
            return
        text = f"[WARN] the pilot dropped {what}: {why}"
        # Logged like the agent's own trace lines ("job 12: ..."), so the log holds every line the trace should.
        log.info("%s: %s", self.name, text)
        self.queue.appendleft(Report("trace", {"entries": [self._entry("trace", text)]}, is_drop_note=True))

    def _queue_outage(self, now: float) -> None:
        down = now - (self.unreachable_since or now)
        began = self.unreachable_since_wall
        self.unreachable_since = self.unreachable_since_wall = None
        # ALICE's pilot reports an outage once central answers again, so the job's trace shows the gap; dated when
        # it began, so that the trace puts the gap where it was, before the lines held back through it.
        text = f"errorConnecting: central was unreachable for {down:.0f} s"
        log.info("%s: %s", self.name, text)
        self.queue.appendleft(Report("trace", {"entries": [self._entry("trace", text, ts=began)]}))
        if self.on_outage is not None:
            self.on_outage(down)

    def drain(self, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Flush until empty or `timeout_s` passes (at the end of a job). True when everything was delivered."""
        deadline = self.clock() + timeout_s
        while not self.flush(force=True):
            if self.clock() >= deadline:
                return False
            sleep(min(self._delay or self.backoff_s, max(0.0, deadline - self.clock())))
        return True


__all__ = ["COALESCE_LINES", "COALESCE_S", "MAX_BATCH", "OPTIONAL_STATUS_FIELDS", "Outbox", "POISON_AFTER", "RETRY_LATER", "Report",
           "sender"]
