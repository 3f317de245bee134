"""A thread that notices when a long-lived pilot process's main loop stops advancing.

The loop calls `beat()` every turn; the watchdog logs (and calls `on_stuck`) once when no beat came for `timeout_s`,
and again when the loop moves on. It never kills anything: a stuck loop may be waiting on a slow disk, and the
batch system's own limits end a truly hung pilot.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

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
