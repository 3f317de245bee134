"""The JobAgent before it has a job: the site map of its slot, the match with central, the events that tell the
runner how it went, and the report for a job that ends before it could start.

Events (JSON lines on the agent's stdout, for the runner): `matched` (job id, cores and GPUs taken), `nomatch`,
`unreachable` (central did not answer: not an empty match), `error` (central refused the match; its HTTP status),
`done` (final state and kill reason). The agent exits with one of the EXIT_* codes.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import orjson

from gridpilot import _native
from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable, ConfigError, JdlError
from gridpilot.isolation import gpus as gpus_mod
from gridpilot.jdl import JobDescription, parse_job
from gridpilot.pilot.finalstate import final_path
from gridpilot.pilot.agentsettings import AgentSettings
from gridpilot.pilot.gpuarch import gpu_arch
from gridpilot.pilot.sitemap import build_site_map, cvmfs_revision, disk_free_mb, node_gpus
from gridpilot.states import JobStatus, KillReason
from gridpilot.tls import read_ca_file

#: The agent's log, as before the agent was split in modules.
log = logging.getLogger("gridpilot.agent")

EXIT_DONE = 0
EXIT_NOMATCH = 3
EXIT_UNREACHABLE = 4
EXIT_ERROR = 1


def emit(event: str, **fields: Any) -> None:
    """One event line for the runner. A runner that is gone reads none: the agent goes on without it (its reports
    go to central on their own: pilot/heartbeat.py), its events from then on to /dev/null."""
    try:
        sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError) as e:
        log.warning("the runner no longer reads the agent's events (%s): the agent goes on without it", e)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.stdout = open(os.devnull, "w")


_CPU: Optional[_native.CpuInfo] = None


def cpu() -> _native.CpuInfo:
    """This node's CPU (read once per agent)."""
    global _CPU
    if _CPU is None:
        _CPU = _native.cpu_info()
    return _CPU


@dataclass
class Matched:
    """A job this agent took, with what it needs to run it."""

    #: For the job's reports: a client that does not retry (the job's outbox does).
    client: CentralClient
    match: Dict[str, Any]
    job: JobDescription
    #: The GPUs the job got, and every GPU of the node.
    gpus: List[_native.Gpu]
    node_gpus: List[_native.Gpu]
    #: The text of the CA bundle central is verified with, read now: the wrapper may run in a container that does
    #: not see the file.
    ca_pem: Optional[str]


def take(settings: AgentSettings, stopped: Callable[[], bool]) -> Union[Matched, int]:
    """Match a job and claim its GPUs: the job, or the exit code of an agent that has none to run (its events
    emitted, and a matched job that cannot start here reported to central). `stopped`: whether the runner has sent
    SIGTERM meanwhile, so that a job central assigned is given back at once."""
    cfg = settings.config
    # The runner resolves these before it starts agents (central.url, the agent token's site and CE).
    assert cfg.central_url and cfg.site and cfg.ce, "the agent needs a resolved configuration"
    url = cfg.central_url
    try:
        ca_pem = read_ca_file(cfg.ca_file) if cfg.ca_file else None
        client = CentralClient(url, cfg.agent_token(), timeout=10.0, retries=1, ca_file=cfg.ca_file)
    except ConfigError as e:
        emit("error", error=str(e))
        return EXIT_ERROR
    every_gpu = node_gpus(cfg.sysfs, cfg.pci_ids)
    all_gpus = [g for g in every_gpu if g.pci_address in settings.free_gpus]
    match = ask(client, settings, all_gpus)
    if isinstance(match, int):
        return match
    job_client = CentralClient(url, cfg.agent_token(), timeout=5.0, retries=0, ca_file=cfg.ca_file)
    job_id, resubmission = int(match["id"]), int(match.get("resubmission", 0))

    def unstarted(state: JobStatus, reason: KillReason, message: str) -> None:
        end_unstarted(settings, job_id, resubmission, state, reason, message)

    if stopped():
        unstarted(JobStatus.WAITING, KillReason.OK, "the slot ended while the job was being matched")
        return EXIT_DONE
    try:
        job = parse_job(match["jdl"])
    except JdlError as e:
        # Central validated it at submission; a JDL that fails here is the broker's fault, not the node's.
        unstarted(JobStatus.ERROR_A, KillReason.JOBBROKER, str(e))
        return EXIT_ERROR
    gpus = gpus_mod.claim(job, all_gpus, arch_of=lambda g: gpu_arch(g, cfg.sysfs))
    if gpus is None:
        # The broker counted GPUs this slot no longer has free (another agent claimed them meanwhile).
        unstarted(JobStatus.WAITING, KillReason.OK, "the GPUs the job asks for are not free on this node")
        return EXIT_DONE
    emit("matched", job_id=job_id, cores=job.cpu_cores, gpus=[g.pci_address for g in gpus])
    return Matched(job_client, match, job, gpus, every_gpu, ca_pem)


def ask(client: CentralClient, settings: AgentSettings, gpus: List[_native.Gpu]) -> Union[Dict[str, Any], int]:
    """Ask central for a job that fits this slot, with `gpus` free: the match, or the exit code of an agent that got
    none (its event already emitted)."""
    cfg = settings.config
    assert cfg.site and cfg.ce
    site_map = build_site_map(
        site=cfg.site,
        ce=cfg.ce,
        partition=cfg.partition,
        node=cfg.node,
        ttl_left=settings.ttl_left,
        free_cores=settings.free_cores,
        memory_mb=settings.memory_mb,
        disk_mb=settings.disk_mb or disk_free_mb(cfg.workdir),
        cpu=cpu(),
        gpus=gpus,
        close_se=cfg.close_se,
        users=cfg.users,
        nousers=cfg.nousers,
        cvmfs_revision=cvmfs_revision(),
        sysfs=cfg.sysfs,
        arch=cfg.arch_override,
        offer=settings.node_offer,
    )
    try:
        match = client.match(site_map)
    except CentralUnreachable as e:
        emit("unreachable", error=e.reason)
        return EXIT_UNREACHABLE
    except CentralError as e:
        # The status tells the runner whether central refused the token itself (401, 403): no use matching again.
        emit("error", error=str(e), status=e.status, code=e.code)
        return EXIT_ERROR
    if match is None:
        emit("nomatch")
        return EXIT_NOMATCH
    return match


def end_unstarted(settings: AgentSettings, job_id: int, resubmission: int, state: JobStatus, reason: KillReason,
                  message: str) -> None:
    """Report the end of a matched job that never started (central gets every state it needs on the way), and tell
    the runner."""
    cfg = settings.config
    assert cfg.central_url
    # Retried a few times: this is the only report of the job, and a lost one leaves it ASSIGNED.
    reporter = CentralClient(cfg.central_url, cfg.agent_token(), timeout=5.0, retries=5, ca_file=cfg.ca_file)
    try:
        if reason is not KillReason.OK:
            # The agent's trace line for a decided kill reason (pilot/agent.py _finish), keyed so a retry stores it once.
            reporter.append_trace(job_id, [{"category": "trace", "text": f"Kill reason {reason.describe()}",
                                            "key": f"{resubmission}.unstarted.kill_reason"}])
        for step in final_path(None, state):
            reporter.set_status(job_id, state=step.name, resubmission=resubmission,
                                kill_reason=reason.name if step is state else None, message=message)
    except (CentralUnreachable, CentralError) as e:
        log.error("job %d: could not report %s: %s", job_id, state.name, e)
    emit("done", job_id=job_id, state=state.name, kill_reason=reason.name)
