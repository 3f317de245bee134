"""Watchdogs of the pilot's loops: a JobAgent's monitoring loop, watched by its JobRunner (StallWatch, LoopBeat,
below), and the JobRunner's own loop, watched by a thread (Watchdog).

Watchdog: the loop calls `beat()` every turn; the watchdog logs (and calls `on_stuck`) once when no beat came for `timeout_s`,
and again when the loop moves on. It never kills anything: a stuck loop may be waiting on a slow disk, and the
batch system's own limits end a truly hung pilot.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

log = logging.getLogger("gridpilot.watchdog")


class Watchdog:
    def __init__(self, name: str, timeout_s: float = 300.0, on_stuck: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.on_stuck = on_stuck
        self.clock = clock
        self._last = clock()
        self._stuck = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.stuck_events = 0

    def beat(self) -> None:
        self._last = self.clock()

    def check(self) -> None:
        """One look (the thread calls this; tests call it directly)."""
        idle = self.clock() - self._last
        if idle > self.timeout_s and not self._stuck:
            self._stuck = True
            self.stuck_events += 1
            msg = f"{self.name}: main loop has not advanced for {idle:.0f} s"
            log.warning(msg)
            if self.on_stuck is not None:
                self.on_stuck(msg)
        elif idle <= self.timeout_s and self._stuck:
            self._stuck = False
            log.info("%s: main loop advancing again", self.name)

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            self.check()

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- the JobAgent's monitoring loop, watched by its runner ------------------------------------------------------------
#
# The watchdog of a JobAgent's monitoring loop lives in the JobRunner, not in a thread of the agent: a thread shares
# whatever stops the loop (the process stopped or swapped out, a native call holding the GIL, the interpreter hung),
# while the runner is another process that already reads each agent's events in its own loop. The agent says its
# loop turned (a "beat" event, LoopBeat); the runner (StallWatch) notices a loop that has not for longer than
# `stall_intervals` x `interval` seconds (config: watchdog_stall_intervals, watchdog_interval), traces it to the job
# and reports it to central (pilot/nodereports.py), where it counts towards the node's nodeBad.

#: The event an agent's loop sends its runner.
BEAT = "beat"


class LoopBeat:
    """The agent's side: its loop calls `beat()` every turn; at most twice per `interval_s` that becomes a beat
    event to the runner (`emit(event, **fields)`). The loop also waits at most `interval_s` (agent.py), so a loop
    that turns sends a beat at least every interval. Before a call known to block longer (a payload's kill with its
    ForcedKillTimeout), `busy(s)` tells the runner not to count the next `s` seconds as a stall."""

    def __init__(self, emit: Callable[..., None], interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.interval_s = interval_s
        self.clock = clock
        self._last: Optional[float] = None

    def beat(self) -> None:
        now = self.clock()
        if self._last is None or now - self._last >= self.interval_s / 2:
            self._last = now
            self.emit(BEAT)

    def busy(self, seconds: float) -> None:
        self._last = self.clock()
        self.emit(BEAT, busy_s=round(seconds, 3))

    def stop(self) -> None:
        """The loop is over (the job's end follows): nothing to watch any more."""
        self.emit(BEAT, watching=False)


@dataclass
class Stall:
    """A loop that stopped turning (`ended` None), or turned again after `seconds` (`ended` the time it did)."""

    key: int
    job_id: Optional[int]
    seconds: float
    ended: Optional[float] = None


@dataclass
class _Watched:
    job_id: Optional[int]
    last: float
    quiet_until: float
    stalled_since: Optional[float] = None


class StallWatch:
    """The runner's side: one entry per agent whose loop is watched (keyed by the agent's index). `check()` gives each
    loop that has been silent for more than `limit_s` once; `beat()` of such a loop gives its recovery."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self._watched: Dict[int, _Watched] = {}

    def beat(self, key: int, job_id: Optional[int], busy_s: float = 0.0, watching: bool = True) -> Optional[Stall]:
        """A beat of `key`'s loop (the first one starts watching it; `watching` False stops). A Stall with `ended`
        set when the loop had been reported stalled."""
        now = self.clock()
        w = self._watched.get(key)
        recovered = None
        if w is not None and w.stalled_since is not None:
            recovered = Stall(key, w.job_id, now - w.last, ended=now)
        if not watching:
            self._watched.pop(key, None)
            return recovered
        if w is None:
            w = self._watched[key] = _Watched(job_id, now, now)
        w.job_id = job_id if job_id is not None else w.job_id
        w.last, w.stalled_since = now, None
        w.quiet_until = now + max(0.0, busy_s)
        return recovered

    def forget(self, key: int) -> None:
        self._watched.pop(key, None)

    def check(self) -> List[Stall]:
        """The loops that have just passed the limit (each once until it beats again)."""
        now = self.clock()
        out = []
        for key, w in self._watched.items():
            if w.stalled_since is None and now - max(w.last, w.quiet_until) > self.limit_s:
                w.stalled_since = now
                out.append(Stall(key, w.job_id, now - w.last))
        return out

    def next_due(self) -> Optional[float]:
        """When the next loop would pass the limit (for the runner's wait), or None."""
        due = [max(w.last, w.quiet_until) + self.limit_s for w in self._watched.values() if w.stalled_since is None]
        return min(due) if due else None
