"""Whether central answers the CE, and when to try it again while it does not.

A central outage is a state, not an error of each cycle: the CE logs one line when central stops answering, one
every `log_every` seconds while it stays down, and one when it answers again (with how long it was away). Between
tries it waits with capped exponential backoff and jitter (first 1 s, doubling, at most `backoff_max`; each wait
drawn between half and all of its step), so the CEs of many sites do not all come back in the same second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional, Union

from gridpilot.errors import CentralUnreachable
from gridpilot.reachability import UNAVAILABLE_STATUSES, Backoff, duration, unavailable

log = logging.getLogger("gridpilot.ce")

#: The first wait after central stopped answering; each further one doubles, up to backoff_max.
BACKOFF_FIRST_S = 1.0


def _reason(e: Union[BaseException, str]) -> str:
    if isinstance(e, CentralUnreachable):
        return e.reason
    return str(e)


class CentralReach:
    """Central's reachability as the CE last saw it. `ok()` after any answer, `failed()` after a call that found
    no central; `due()` says whether to try it now. Read by the metrics thread, written by the CE's loop."""

    def __init__(self, url: str, *, backoff_max: float = 15.0, log_every: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.url = url
        self.backoff_max = backoff_max
        self._backoff = Backoff(BACKOFF_FIRST_S, backoff_max, rng=rand)
        self.log_every = log_every
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        #: None until the first call; then whether the last call found central.
        self.reachable: Optional[bool] = None
        #: Unix time of the last answer from central.
        self.last_contact: Optional[float] = None
        self.failures = 0
        self._down_since = 0.0
        self._last_line = 0.0
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self.reachable is False

    def ok(self) -> None:
        with self._lock:
            if self.reachable is False:
                log.info("central at %s answers again, after %s unreachable", self.url,
                         duration(self._clock() - self._down_since))
            self.reachable = True
            self.failures = 0
            self._backoff.reset()
            self.last_contact = self._wall()

    def failed(self, error: Union[BaseException, str]) -> float:
        """Central did not answer: log the state change (or the periodic still-down line); the wait before the
        next try."""
        with self._lock:
            t = self._clock()
            if self.reachable is not False:
                self._down_since = self._last_line = t
                log.warning("central at %s unreachable (%s); the pilots in the batch system are watched as before, "
                            "nothing is submitted until it answers; trying again with backoff up to %g s", self.url,
                            _reason(error), self.backoff_max)
            elif t - self._last_line >= self.log_every:
                self._last_line = t
                log.warning("central at %s still unreachable after %s (%s)", self.url,
                            duration(t - self._down_since), _reason(error))
            self.reachable = False
            self.failures += 1
            wait = self._backoff.next()
            self._next_try = t + wait
            return wait

    def due(self) -> bool:
        """Whether to call central now: always while it answers; while it does not, once its backoff wait is over."""
        return self.reachable is not False or self._clock() >= self._next_try

    def wait_s(self) -> float:
        """Seconds until the next try (0 while central answers)."""
        return 0.0 if self.reachable is not False else max(0.0, self._next_try - self._clock())

    def down_for(self) -> float:
        return self._clock() - self._down_since if self.reachable is False else 0.0


__all__ = ["BACKOFF_FIRST_S", "UNAVAILABLE_STATUSES", "CentralReach", "unavailable"]
