"""The one interface every batch system back end of the computing element implements, and the words they share.

A back end knows nothing of central or of tokens: it submits a start-up script with resources, lists the states
of the pilots it submitted, and removes one. The factory (factory.py) decides what to submit.
"""

from __future__ import annotations

import json
import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from gridpilot.errors import BatchError

QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
HELD = "held"
#: Every state a back end reports, in the order central's /metrics lists them.
PILOT_STATES: Tuple[str, ...] = (QUEUED, RUNNING, FINISHED, FAILED, HELD)
#: States a pilot never leaves.
FINAL_STATES = frozenset({FINISHED, FAILED})


#: The architectures a shape may name (as tools/cvmfs_tree.py lays out installations per arch).
SHAPE_ARCHES = ("x86_64", "aarch64", "riscv64")
#: sbatch --constraint: node features joined by & | , ! and grouped by ( ) [ ] with *N counts; no spaces.
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.:&|!*,()\[\]-]{1,255}$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]{1,255}$")


@dataclass(frozen=True, order=True)
class Resources:
    """What one pilot asks its batch system for: its slot (cores, memory in MB), its wall time in seconds, and its
    GPUs: a count, and optionally the vendor and model they are (what central matches a job's `GPU = "NVIDIA"`
    against; the batch system is asked for the count only). A mixed-arch site also says which nodes: the `arch` the
    pilot offers central (and whose installation it runs; "" the CE's own), and where Slurm finds such nodes, a
    `constraint` (sbatch --constraint, node features) and a `partition` (over the CE's slurm_partition)."""

    cores: int
    memory_mb: int
    wall_s: int
    gpus: int = 0
    gpu_vendor: str = ""
    gpu_model: str = ""
    arch: str = ""
    constraint: str = ""
    partition: str = ""

    def __post_init__(self) -> None:
        for name in ("cores", "memory_mb", "wall_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {v!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"gpus must be a whole number of at least 0, got {self.gpus!r}")
        for name in ("gpu_vendor", "gpu_model"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > 255:
                raise ValueError(f"{name} must be a string of at most 255 characters, got {v!r}")
            if v and not self.gpus:
                raise ValueError(f"{name} {v!r} is given but gpus is 0: say how many GPUs a pilot of this shape has")
        for name in ("arch", "constraint", "partition"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.arch and self.arch not in SHAPE_ARCHES:
            raise ValueError(f"arch must be one of {', '.join(SHAPE_ARCHES)}, got {self.arch!r}")
        if self.constraint and not _CONSTRAINT.match(self.constraint):
            raise ValueError(f"constraint must be a Slurm feature expression of at most 255 characters (letters, "
                             f"digits and _ . : & | ! * , ( ) [ ] -), got {self.constraint!r}")
        if self.partition and not _PARTITION.match(self.partition):
            raise ValueError(f"partition must be a Slurm partition name (or a comma-separated list) of at most 255 "
                             f"characters (letters, digits and _ . , -), got {self.partition!r}")

    @property
    def gpu_label(self) -> str:
        """The GPUs' vendor and model as central labels a site map's GPU ("" when not said)."""
        return f"{self.gpu_vendor} {self.gpu_model}".strip()

    def fits_in(self, other: Resources) -> bool:
        """Every job that fits this shape fits `other` too."""
        if (self.arch or other.arch) and self.arch != other.arch:
            return False  # an aarch64 job never runs on an x86_64 pilot, and the other way round
        if not (self.cores <= other.cores and self.memory_mb <= other.memory_mb and self.wall_s <= other.wall_s
                and self.gpus <= other.gpus):
            return False
        # A job may name the GPUs it wants ("NVIDIA", "A100"): GPUs of one kind serve the jobs of another kind only
        # when nothing was said of the kind (then no job naming one fits this shape at all).
        return not self.gpus or not self.gpu_label or (self.gpu_vendor, self.gpu_model) == (other.gpu_vendor,
                                                                                               other.gpu_model)

    def site_map_gpus(self) -> List[Dict[str, str]]:
        """This shape's GPUs as the site map's `gpus` field lists them (central's broker counts and names them)."""
        return [{"vendor": self.gpu_vendor, "model": self.gpu_model} for _ in range(self.gpus)]

    def to_dict(self) -> Dict[str, Any]:
        return {"cores": self.cores, "memory_mb": self.memory_mb, "wall_s": self.wall_s, "gpus": self.gpus,
                "gpu_vendor": self.gpu_vendor, "gpu_model": self.gpu_model, "arch": self.arch,
                "constraint": self.constraint, "partition": self.partition}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Resources:
        return cls(int(d["cores"]), int(d["memory_mb"]), int(d["wall_s"]), int(d.get("gpus", 0)),
                   str(d.get("gpu_vendor", "")), str(d.get("gpu_model", "")), str(d.get("arch", "")),
                   str(d.get("constraint", "")), str(d.get("partition", "")))

    @property
    def wall_minutes(self) -> int:
        return max(1, math.ceil(self.wall_s / 60))

    def label(self) -> str:
        text = f"{self.cores}c/{self.memory_mb}MB/{self.wall_s}s"
        if self.gpus:
            text += f"/{self.gpus}gpu" + (f"({self.gpu_label})" if self.gpu_label else "")
        if self.arch:
            text += f"/{self.arch}"
        # The Slurm placement is part of what tells two shapes apart (two partitions of one arch are two shapes).
        if self.partition:
            text += f"@{self.partition}"
        if self.constraint:
            text += f"[{self.constraint}]"
        return text


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


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write a small JSON record so that a reader (a CE restarted after a crash) sees the old one or the new one
    whole, never a part: a temporary file in the same directory, flushed to disk, then renamed over."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, json.dumps(data, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class BatchBackend(ABC):
    """A batch system as the computing element sees it. Batch ids are strings, as each system spells them."""

    #: Short name, as in the configuration and the `batch job <name>:<id>` traces of the pilots.
    name: str = ""
    #: The pilots start far from the CE, in a directory the batch system makes for each (ARC's session directory)
    #: and the back end uploads their script and token file into: the script names its files relative to it.
    remote_files: bool = False
    #: submit_many submits many pilots in one request: the factory prepares a cycle's pilots of a shape first.
    bulk: bool = False

    @abstractmethod
    def submit(self, pilot: PilotSubmission) -> str:
        """Submit one pilot; its batch id. BatchError when the batch system refuses."""

    def submit_many(self, pilots: Sequence[PilotSubmission]) -> List[Union[str, BatchError]]:
        """Submit several pilots; in their order, each one's batch id or the BatchError that refused it. One by
        one here, and after a refusal the rest are not tried (the batch system is unhappy now)."""
        out: List[Union[str, BatchError]] = []
        for p in pilots:
            if out and isinstance(out[-1], BatchError):
                out.append(BatchError(f"pilot {p.name} not submitted: the one before was refused"))
                continue
            try:
                out.append(self.submit(p))
            except BatchError as e:
                out.append(e)
        return out

    @abstractmethod
    def states(self) -> Dict[str, str]:
        """The pilots this back end submitted for this CE that the batch system still knows: {batch id: state}."""

    @abstractmethod
    def remove(self, batch_id: str) -> None:
        """Take a pilot out of the batch system (cancel it if queued, end it if running)."""

    def check_shapes(self, shapes: Sequence[Resources]) -> None:
        """BatchError when this back end can never start a pilot of one of these shapes (checked at the CE's start,
        before anything is submitted). Batch systems judge that themselves, at submission."""

    def adopt(self, batch_id: str, workdir: Path) -> None:
        """Take back a pilot a previous CE process submitted (its directory `workdir`), so that states() lists it
        and remove() reaches it. Batch systems list a CE's pilots by name whoever submitted them: nothing to do."""

    def state_of(self, batch_id: str) -> Optional[str]:
        """One pilot's state when states() no longer lists it (it left the queue): None when nobody knows."""
        return None

    def exit_code(self, batch_id: str) -> Optional[int]:
        """An ended pilot's exit status as the batch system recorded it (negative -N: killed by signal N), or None
        when it keeps none. The CE asks only when the pilot left no `pilot.exit` (killed outright, node lost)."""
        return None

    def unavailable(self, shape: Resources) -> Optional[str]:
        """Why no pilot of this shape can be submitted now (every place for it backed off), or None: asked before
        tokens are minted for a bulk submission."""
        return None

    def describe(self) -> List[str]:
        """Lines for `gridpilot ce`'s start-up description, where the back end has more to say than its name."""
        return []

    def close(self) -> None:
        """Release what the back end holds (connections, child processes)."""
