"""What the JobRunner hands each JobAgent it starts (as JSON on the agent's stdin), and where a job's work directory
is: both sides need them, so they live apart from either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import orjson

from gridpilot.config import PilotConfig


@dataclass
class AgentSettings:
    """What the runner hands one agent."""

    config: PilotConfig
    index: int = 0
    free_cores: int = 1
    ttl_left: float = 86400.0
    memory_mb: int = 0
    disk_mb: int = 0
    #: PCI addresses of the GPUs no other job holds.
    free_gpus: List[str] = field(default_factory=list)
    #: This agent's cgroup (agents/JobAgent_<n>) when the runner built the slot tree.
    cgroup: Optional[str] = None
    #: This agent's cgroup v1 directories, {controller: agents/JobAgent_<n>}, on hybrid hosts (for limits only).
    cgroup_v1: Dict[str, str] = field(default_factory=dict)
    batch_id: Optional[str] = None
    #: What the runner's node probe offers the broker (sitemap.node_offer): x86_64_level, cpu_features, containers.
    node_offer: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        d["config"] = dict(self.config.__dict__)
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, data: bytes) -> AgentSettings:
        d = orjson.loads(data)
        d["config"] = PilotConfig(**d["config"])
        return cls(**d)


def job_workdir(cfg: PilotConfig, job_id: int) -> Path:
    """Where a job runs: one directory per job below the pilot's work directory."""
    return Path(cfg.workdir) / f"alien-job-{job_id}"
