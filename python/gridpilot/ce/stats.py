"""What the CE counts for its metrics: written by the CE's loop, read by the metrics server's thread (hence the lock
and the copies). Plain Python, so the CE needs prometheus_client only when it serves /metrics (ce/metrics.py).

Counts are since this CE process started, as Prometheus counters are.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Mapping

from gridpilot.ce.backend import HELD, QUEUED, RUNNING

#: The states a pilot is in while the batch system has it, as the metrics list them.
IN_BATCH_STATES = (QUEUED, RUNNING, HELD)


@dataclass(frozen=True)
class Snapshot:
    site: str
    ce: str
    backend: str
    submitted: Mapping[str, int]
    ended: Mapping[str, int]
    removed: int
    in_batch: Mapping[str, int]
    cycles: int
    cycle_errors: int
    #: Shapes (by label) that get no pilot because the pinned version has no installation for them: why.
    missing: Mapping[str, str] = field(default_factory=dict)


@dataclass
class CEStats:
    site: str = ""
    ce: str = ""
    backend: str = ""
    #: Pilots submitted, by shape label (Resources.label()).
    submitted: Counter = field(default_factory=Counter)
    #: Pilots seen to end, by exit reason (exitcodes.reason(), or "unknown").
    ended: Counter = field(default_factory=Counter)
    #: Pilots removed because they stayed queued or held too long.
    removed: int = 0
    #: Pilots in the batch system by state at the end of the last cycle that saw it.
    in_batch: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in IN_BATCH_STATES})
    cycles: int = 0
    cycle_errors: int = 0
    missing: Dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bind(self, site: str, ce: str, backend: str) -> None:
        with self._lock:
            self.site, self.ce, self.backend = site, ce, backend

    def count_submitted(self, shape: str) -> None:
        with self._lock:
            self.submitted[shape] += 1

    def count_ended(self, reason: str) -> None:
        with self._lock:
            self.ended[reason] += 1

    def count_removed(self) -> None:
        with self._lock:
            self.removed += 1

    def count_cycle(self, in_batch: Mapping[str, int], *, had_errors: bool, saw_batch: bool) -> None:
        """One cycle done; `in_batch` is what it saw, kept only when it saw the batch system at all."""
        with self._lock:
            self.cycles += 1
            self.cycle_errors += bool(had_errors)
            if saw_batch:
                self.in_batch = {s: int(in_batch.get(s, 0)) for s in IN_BATCH_STATES}

    def set_missing(self, missing: Mapping[str, str]) -> None:
        """The shapes the last cycle found without an installation (ce/installs.py), by label: why."""
        with self._lock:
            self.missing = dict(missing)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.site, self.ce, self.backend, dict(self.submitted), dict(self.ended), self.removed,
                            dict(self.in_batch), self.cycles, self.cycle_errors, dict(self.missing))


__all__ = ["CEStats", "IN_BATCH_STATES", "Snapshot"]
