"""ARC CEs that refuse or time out are left alone for a while (aCT's behaviour): the first failure backs a CE off
for `base_s`, each further one in a row doubles that up to `cap_s`, a success clears it. One rule for both users:
the CE's arc backend (ce/arc.py: its pilots go to the shape's other ARC CEs meanwhile) and the tower
(tower/service.py: a site's jobs go to its other CEs, in their configured order; jobs no CE takes within the
submit deadline go back to central).

Kept in memory: a restarted CE or tower tries every ARC CE again at once, which costs one request per ARC CE that
is still down and is the right thing when the restart was the cure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

log = logging.getLogger("gridpilot.arc")


@dataclass
class _State:
    failures: int = 0
    until: float = 0.0
    last_error: str = ""


class CEBackoff:
    def __init__(self, base_s: float, cap_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self.cap_s = max(base_s, cap_s)
        self.clock = clock
        self._ces: Dict[str, _State] = {}

    def available(self, url: str) -> bool:
        s = self._ces.get(url)
        return s is None or self.clock() >= s.until

    def usable(self, urls: Sequence[str]) -> List[str]:
        """The CEs of `urls` not backed off now, in their order."""
        return [u for u in urls if self.available(u)]

    def failed(self, url: str, error: str) -> float:
        """Back `url` (an ARC CE's URL or name: what the log names it by) off after a refusal or a time-out;
        returns for how long."""
        s = self._ces.setdefault(url, _State())
        s.failures += 1
        delay = min(self.cap_s, self.base_s * 2.0 ** min(s.failures - 1, 60))
        s.until = self.clock() + delay
        s.last_error = error
        log.warning("ARC CE %s: %s; backed off for %.0f s (failure %d in a row)", url, error, delay, s.failures)
        return delay

    def succeeded(self, url: str) -> None:
        s = self._ces.pop(url, None)
        if s is not None and s.failures:
            log.info("ARC CE %s answers again after %d failures", url, s.failures)

    def failures(self, url: str) -> int:
        s = self._ces.get(url)
        return s.failures if s else 0

    def backed_off_for(self, url: str) -> Optional[float]:
        s = self._ces.get(url)
        if s is None:
            return None
        left = s.until - self.clock()
        return left if left > 0 else None


__all__ = ["CEBackoff"]
