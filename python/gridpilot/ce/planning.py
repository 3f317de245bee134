"""How many pilots of each shape to submit this cycle: pure arithmetic, tested without a batch system.

Central's probe counts, per shape, the WAITING jobs that fit it; a job that fits a small shape fits every larger one
too, so each shape is charged only with the jobs that no smaller shape it contains can take (exclusive_waiting).
Pilots already on their way (queued, or started so recently they have not matched yet) cover that many jobs; the
rest is the demand. One pilot per waiting job: a pilot that finds nothing left ends after a few empty matches,
which costs far less than a job left waiting. The limits then cut the demand, smallest shapes served first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

from gridpilot.ce.backend import Resources


@dataclass(frozen=True)
class Limits:
    max_queued: int
    max_running: int
    per_cycle: int


def exclusive_waiting(waiting: Mapping[Resources, int]) -> Dict[Resources, int]:
    """For each shape, the waiting jobs that fit it but no smaller shape inside it."""
    out: Dict[Resources, int] = {}
    for shape in sorted(waiting):
        inner = [n for other, n in waiting.items() if other != shape and other.fits_in(shape)]
        out[shape] = max(0, waiting[shape] - max(inner, default=0))
    return out


def room(limits: Limits, queued: int, in_batch: int) -> int:
    """How many pilots may be submitted now: `queued` pilots wait in the queue, `in_batch` are in the batch system
    at all (queued, running, held), and each new one counts against both."""
    return max(0, min(limits.per_cycle, limits.max_queued - queued, limits.max_running - in_batch))


def plan(waiting: Mapping[Resources, int], coming: Mapping[Resources, int], limits: Limits, *, queued: int,
         in_batch: int) -> Dict[Resources, int]:
    """Pilots to submit per shape. `waiting`: the probe's counts; `coming`: pilots per shape that will still take
    a job (queued or just started)."""
    left = room(limits, queued, in_batch)
    out: Dict[Resources, int] = {}
    for shape, n in exclusive_waiting(waiting).items():
        want = max(0, n - coming.get(shape, 0))
        take = min(want, left)
        out[shape] = take
        left -= take
    return out


__all__ = ["Limits", "exclusive_waiting", "plan", "room"]
