"""Waiting out central: capped exponential backoff with jitter, and one log line per change of central's
reachability (down; still down every few minutes; back) instead of one per try.

Beside client.py (layer 4), so that every piece that waits for central (the runner, the CE) paces and reports its
retries alike.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from typing import Any, Callable, Optional

from gridpilot.errors import CentralError, CentralUnreachable

#: While central stays down, a reminder this often (not one line per try).
STILL_DOWN_EVERY_S = 300.0
#: Answers of a proxy or load balancer in front of a central that is not there: an outage, not central's verdict.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
#: Central's answers when it is there but busy: admission control's (central/admission.py) 503 overloaded and 429
#: rate_limited, given before any of the request ran, and 503 database_unavailable. Not an outage: the caller
#: waits Retry-After and tries again, and nothing counts it against the node's link to central.
BUSY_CODES = frozenset({"overloaded", "rate_limited", "database_unavailable"})
#: Of those, the refusals that certify nothing of the request was done: any call, even a match, may be repeated.
NOT_STARTED_CODES = frozenset({"overloaded", "rate_limited"})
#: The longest wait a Retry-After is taken for (a bigger one is capped here: a misconfigured proxy must not park
#: a pilot for an hour).
MAX_RETRY_AFTER_S = 120.0
#: The jitter added to a Retry-After: up to this fraction of it, so the clients refused together come back spread.
RETRY_AFTER_JITTER = 0.5


def busy(e: BaseException) -> bool:
    """True when central answered that it is busy (BUSY_CODES): wait `e.retry_after` and try again, no outage."""
    return isinstance(e, CentralError) and e.status in (429, 503) and e.code in BUSY_CODES


def not_started(status: int, code: str) -> bool:
    """Whether an answer certifies that central did nothing of the request (NOT_STARTED_CODES)."""
    return status in (429, 503) and code in NOT_STARTED_CODES


def parse_retry_after(value: Optional[str], now: Callable[[], float] = time.time) -> Optional[float]:
    """A Retry-After header's seconds (delay-seconds, or an HTTP date: the seconds until it), at least 0 and at most
    MAX_RETRY_AFTER_S; None when absent or not one of those."""
    if value is None:
        return None
    value = value.strip()
    seconds: Optional[float]
    if value.isdigit():
        seconds = float(value[:9])
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def retry_after_delay(retry_after: float, rng: Callable[[], float] = random.random) -> float:
    """How long to wait when told Retry-After seconds: that, plus up to RETRY_AFTER_JITTER of it (at least 0.1 s of
    spread for a Retry-After of 0), so that clients refused at the same moment do not come back at the same one."""
    base = min(MAX_RETRY_AFTER_S, max(0.0, retry_after))
    return base + max(0.1, base * RETRY_AFTER_JITTER) * rng()


def poll_wait(interval: float, poll_interval: float, failures: int, e: BaseException) -> float:
    """The wait before the next control poll after `failures` failed ones in a row, the last failing with `e`:
    doubling from the poll interval up to the heartbeat's `interval` (a poll into an outage may take the client's
    whole timeout, and the loop that waits is the one that watches the payload), and no sooner than a busy central's
    Retry-After (jittered)."""
    wait = min(interval, poll_interval * 2 ** min(failures, 30))
    if busy(e) and isinstance(e, CentralError) and e.retry_after is not None:
        wait = max(wait, retry_after_delay(e.retry_after))
    return wait


#: The field of a control answer in which central paces the polls (central/pacing.py): seconds.
PACE_FIELD = "poll_after"


def paced_poll(answer: Any, poll_interval: float, interval: float) -> float:
    """The wait before the next control poll after `answer`: the pilot's own `poll_interval`, or central's pace
    (PACE_FIELD) when that is longer, never longer than the heartbeat's `interval` (whose answer carries kills too).
    A pace that is no finite number, as from a central older than the pace, leaves the pilot's own."""
    pace = answer.get(PACE_FIELD) if isinstance(answer, dict) else None
    if isinstance(pace, bool) or not isinstance(pace, (int, float)) or not math.isfinite(pace):
        pace = 0.0
    return min(interval, max(poll_interval, float(pace)))


def unavailable(e: BaseException) -> bool:
    """True when this error means central is not there (as opposed to central answering no)."""
    return isinstance(e, CentralUnreachable) or (isinstance(e, CentralError) and e.status in UNAVAILABLE_STATUSES)


class Backoff:
    """Delays that double from `base_s` up to `cap_s`, each drawn from the upper half of its step (jitter), so that
    the pilots of a whole site, refused at the same moment, do not come back in lockstep."""

    def __init__(self, base_s: float, cap_s: float, rng: Callable[[], float] = random.random) -> None:
        self.base_s = max(0.001, base_s)
        self.cap_s = max(self.base_s, cap_s)
        self.rng = rng
        self.tries = 0

    def next(self) -> float:
        step = min(self.cap_s, self.base_s * 2.0 ** min(self.tries, 60))
        self.tries += 1
        return step * (0.5 + self.rng() / 2)

    def reset(self) -> None:
        self.tries = 0


def duration(s: float) -> str:
    """A length of time as a log line says it: seconds, minutes or hours."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class Reachability:
    """Central as one caller sees it. `failed()` after each try that got no answer, `answered()` after each that
    did; `say` gets a line only when that changes anything: central went down, is still down (every
    `still_every_s`), came back (and after how long)."""

    def __init__(self, url: str, say: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic,
                 still_every_s: float = STILL_DOWN_EVERY_S, doing: str = "") -> None:
        self.url = url
        self.say = say
        self.clock = clock
        self.still_every_s = still_every_s
        #: What the caller does meanwhile, for the "down" line ("matching paused; running jobs go on").
        self.doing = doing
        self.down_since: Optional[float] = None
        self._next_reminder = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def failed(self, error: str) -> None:
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            self._next_reminder = now + self.still_every_s
            self.say(f"central {self.url} unreachable: {error}" + (f"; {self.doing}" if self.doing else ""))
        elif now >= self._next_reminder:
            self._next_reminder = now + self.still_every_s
            self.say(f"central {self.url} still unreachable after {duration(now - self.down_since)}: {error}")

    def answered(self) -> Optional[float]:
        """Central answered: how long it had been down (None when it was not)."""
        if self.down_since is None:
            return None
        gone = self.clock() - self.down_since
        self.down_since = None
        self.say(f"central {self.url} answers again, after {duration(gone)} unreachable")
        return gone


__all__ = ["BUSY_CODES", "MAX_RETRY_AFTER_S", "NOT_STARTED_CODES", "PACE_FIELD", "paced_poll", "STILL_DOWN_EVERY_S", "UNAVAILABLE_STATUSES",
           "Backoff", "Reachability", "busy", "duration", "not_started", "parse_retry_after", "retry_after_delay",
           "unavailable"]
