"""The one interface every batch system back end of the computing element implements, and the words they share.

A back end knows nothing of central or of tokens: it submits a start-up script with resources, lists the states
of the pilots it submitted, and removes one. The factory (factory.py) decides what to submit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
HELD = "held"
#: Every state a back end reports, in the order central's /metrics lists them.
PILOT_STATES: Tuple[str, ...] = (QUEUED, RUNNING, FINISHED, FAILED, HELD)
#: States a pilot never leaves.
FINAL_STATES = frozenset({FINISHED, FAILED})


@dataclass(frozen=True, order=True)
class Resources:
    """What one pilot asks its batch system for: its slot (cores, memory in MB) and its wall time in seconds."""

    cores: int
    memory_mb: int
    wall_s: int

    def __post_init__(self) -> None:
        for name in ("cores", "memory_mb", "wall_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {v!r}")

    def fits_in(self, other: Resources) -> bool:
        """Every job that fits this shape fits `other` too."""
        return self.cores <= other.cores and self.memory_mb <= other.memory_mb and self.wall_s <= other.wall_s

    @property
    def wall_minutes(self) -> int:
        return max(1, math.ceil(self.wall_s / 60))

    def label(self) -> str:
        return f"{self.cores}c/{self.memory_mb}MB/{self.wall_s}s"


@dataclass(frozen=True)
class PilotSubmission:
    """One pilot to submit: its start-up script, resources, a name for the batch system and where its output goes."""

    script: Path
    resources: Resources
    name: str
    output: Path
    #: The directory the batch job starts in (the pilot's own directory).
    workdir: Path
    #: Extra environment for the script, for back ends that set it themselves (local).
    env: Optional[Mapping[str, str]] = None


class BatchBackend(ABC):
    """A batch system as the computing element sees it. Batch ids are strings, as each system spells them."""

    #: Short name, as in the configuration and the `batch job <name>:<id>` traces of the pilots.
    name: str = ""

    @abstractmethod
    def submit(self, pilot: PilotSubmission) -> str:
        """Submit one pilot; its batch id. BatchError when the batch system refuses."""

    @abstractmethod
    def states(self) -> Dict[str, str]:
        """The pilots this back end submitted for this CE that the batch system still knows: {batch id: state}."""

    @abstractmethod
    def remove(self, batch_id: str) -> None:
        """Take a pilot out of the batch system (cancel it if queued, end it if running)."""

    def state_of(self, batch_id: str) -> Optional[str]:
        """One pilot's state when states() no longer lists it (it left the queue): None when nobody knows."""
        return None

    def close(self) -> None:
        """Release what the back end holds (connections, child processes)."""
