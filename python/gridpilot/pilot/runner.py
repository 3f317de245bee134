"""The JobRunner (`gridpilot runner`): one per batch slot. Starts a JobAgent per job while free cores remain.

It owns the slot's resources: cores (accounted per matched job), GPUs (each claimed by one job at a time), time
(the slot TTL), and the slot's cgroup tree when it can build one (isolation/slot.py): one part of it per agent.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import orjson

from gridpilot import _native, exitcodes
from gridpilot.client import CentralClient, token_expires
from gridpilot.config import PilotConfig
from gridpilot.errors import ConfigError
from gridpilot.isolation import containers
from gridpilot.isolation.slot import Slot
from gridpilot.pilot import fdlimit, jobtrace, nodeprobe, nodereports, probepost, sitemap, startup, subreaper, watchdog
from gridpilot.pilot.agentsettings import AgentSettings, job_workdir
from gridpilot.pilot.bulkbeats import BulkBeats
from gridpilot.pilot.runnerlink import HELLO
from gridpilot.pilot.sitemap import batch_job_id, describe_gpus, disk_free_mb, node_gpus, slot_cores, slot_memory_mb
from gridpilot.pilot.wakeup import SignalWakeup
from gridpilot.reachability import Backoff, Reachability

log = logging.getLogger("gridpilot.runner")

#: A job that fails this soon after its agent started counts towards the node's health check.
QUICK_FAILURE_S = 60.0
NODE_BAD_AFTER = 3
#: The agent token must outlive the slot by the agents' wind-down (drain_grace) and this much more, for the last
#: reports of the slot's jobs: the runner ends its slot that long before the token expires.
TOKEN_REPORT_MARGIN_S = 120.0
#: The longest the loop sleeps with nothing due: agents' events, exits and signals wake it, so this only bounds what
#: an unforeseen event would cost.
MAX_WAIT_S = 30.0
#: The most the runner keeps for an agent that does not read its relayed answers (some 5,000 of them).
MAX_RELAY_BACKLOG = 1024 * 1024
#: Why the slot's deadline is what it is (the stop reason logged when it is reached).
SLOT_TTL_REACHED = "slot TTL reached"
TOKEN_EXPIRES = "the agent token expires soon"
#: HTTP statuses with which central refuses the agent token itself: matching again cannot help.
TOKEN_REFUSED_STATUSES = startup.TOKEN_STATUSES
#: Central's refusal of a match to a node it marked nodeBad (central/nodes.py): no use matching again.
NODE_BAD_CODE = "node_bad"

#: Ends that say nothing about the node: the payload broke one of its own limits, its own validation or output list
#: judged it, or its owner killed it. A node running a batch of jobs with a too-short TTL is not broken. JOBBROKER
#: (the JDL central handed out cannot be read here) is central's fault, not the node's. SANDBOX_CREATE and INPUT_FILES
#: do count: a node whose work directory or cgroups cannot be made, or that reaches no storage, is broken.
_PAYLOAD_STATES = frozenset({"ERROR_V", "ERROR_VT", "ERROR_S"})
_PAYLOAD_REASONS = frozenset({"TTL", "MEMORY_USAGE", "DISK_USAGE", "IDLE_CPU", "CORE_DUMP", "OOM_SYSTEM", "KILLED",
                              "JOBBROKER"})


def counts_against_node(state: Optional[str], kill_reason: Optional[str]) -> bool:
    """Whether a job ending so, soon after it started, hints that the node (not the job) is broken."""
    if state is None or not state.startswith("ERROR"):
        return False
    return state not in _PAYLOAD_STATES and kill_reason not in _PAYLOAD_REASONS


@dataclass
class AgentProc:
    index: int
    proc: subprocess.Popen
    started: float
    cgroup: Optional[Path] = None
    job_id: Optional[int] = None
    cores: int = 0
    gpus: List[str] = field(default_factory=list)
    matching: bool = True
    buf: bytes = b""
    final_state: Optional[str] = None
    #: What the runner still has to write the agent (its part of the bulk heartbeats' answers): its stdin is a
    #: pipe written without blocking, so an agent busy elsewhere never holds the runner up.
    out: bytes = b""


class JobRunner:
    def __init__(self, cfg: PilotConfig, *, clock=time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.started = clock()
        self.cores = cfg.cores or slot_cores()
        self.memory_mb = cfg.memory_mb or slot_memory_mb()
        self.deadline = None if cfg.slot_ttl is None else self.started + cfg.slot_ttl
        self.deadline_reason = SLOT_TTL_REACHED
        # A pilot that waited in its batch queue longer than its CE planned for (a CE that was down and did not
        # remove it) has less token left than slot: the slot ends with the token, so no job it takes outlives it.
        expires = self._token_expires()
        if expires is not None:
            by_token = self.started + (expires - time.time()) - (cfg.drain_grace + TOKEN_REPORT_MARGIN_S)
            if self.deadline is None or by_token < self.deadline:
                self.deadline = by_token
                self.deadline_reason = TOKEN_EXPIRES
        self.free_cores = self.cores
        gpus = node_gpus(cfg.sysfs, cfg.pci_ids)
        self.gpus = [g.pci_address for g in gpus]
        self.gpu_text = describe_gpus(gpus, cfg.pci_ids)
        self.claimed_gpus: Dict[str, int] = {}
        self.agents: Dict[int, AgentProc] = {}
        self.next_index = 0
        self.empty_matches = 0
        self.next_match = 0.0
        self.backoff = cfg.match_backoff
        #: While central does not answer, matching is retried with this backoff (jittered) and the tries are not
        #: empty matches: an outage of any length is ridden out until the slot's end.
        self.outage_backoff = Backoff(cfg.match_backoff, cfg.match_backoff_max)
        self.central = Reachability(cfg.central_url or "", self.log_event, clock=clock,
                                    doing="matching paused and retried with backoff; running jobs go on")
        self.stopping = False
        self.stop_reason = ""
        #: What the runner exits with (exitcodes): set with the first stop reason.
        self.exit_code = exitcodes.OK
        self.sel = selectors.DefaultSelector()
        self.cgroups = Slot(cfg.cgroups, limits=cfg.cgroup_limits)
        self.batch_id = batch_job_id()
        self.results: Dict[int, str] = {}
        self.quick_failures = 0
        self.node_bad = False
        #: Why central refuses this node work (nodeBad at central), once it said so: no more matches.
        self.refused: Optional[str] = None
        #: The agents' monitoring loops, watched from here (pilot/watchdog.py), and what is told central about this
        #: node's failures (stalls, outages: pilot/nodereports.py).
        self.stalls = watchdog.StallWatch(cfg.watchdog_interval * cfg.watchdog_stall_intervals, clock=clock)
        self.node_reports = nodereports.NodeReports.for_central(cfg.central_url or "", self._token_or_empty(),
                                                                cfg.ca_file)
        #: The heartbeats and control polls of all of the runner's jobs (pilot/bulkbeats.py); None: each agent
        #: sends its own.
        self.bulk: Optional[BulkBeats] = None
        if cfg.bulk_heartbeats and cfg.central_url:
            try:
                client = CentralClient(cfg.central_url, cfg.agent_token(), timeout=5.0, retries=0,
                                       ca_file=cfg.ca_file)
            except ConfigError as e:
                log.warning("heartbeats are not sent in bulk (%s): each agent sends its own", e)
            else:
                self.bulk = BulkBeats(client, cfg.heartbeat_interval, cfg.kill_poll_interval, self._relay,
                                      clock=clock)

    def log_event(self, text: str) -> None:
        log.info(text)

    def _token_expires(self) -> Optional[float]:
        try:
            return token_expires(self.cfg.agent_token())
        except ConfigError as e:
            log.warning("the agent token's expiry is unknown (%s): the slot TTL alone bounds the jobs taken", e)
            return None

    def _token_or_empty(self) -> str:
        try:
            return self.cfg.agent_token()
        except ConfigError:
            return ""  # said at start-up already (startup.prepare); the reports are then refused and logged

    def _on_stall(self, stall: watchdog.Stall) -> None:
        """The runner's watchdog saw an agent's loop stop turning, or turn again: logged, traced to the job, and a
        stall counted against this node at central."""
        agent = self.agents.get(stall.key)
        pid = agent.proc.pid if agent is not None else "?"
        if stall.ended is None:
            cfg = self.cfg
            text = nodereports.stalled_text(stall.seconds, self.stalls.limit_s, cfg.watchdog_stall_intervals,
                                            cfg.watchdog_interval)
            self.log_event(f"agent {stall.key} (pid {pid}, job {stall.job_id}): {text}")
            if stall.job_id is not None:
                self.node_reports.trace(stall.job_id, text)
            self.node_reports.event(nodereports.STALL, stall.seconds, stall.job_id,
                                    f"JobAgent pid {pid}: no sign of its monitoring loop for {stall.seconds:.0f} s")
        else:
            text = nodereports.resumed_text(stall.seconds)
            self.log_event(f"agent {stall.key} (pid {pid}, job {stall.job_id}): {text}")
            if stall.job_id is not None:
                self.node_reports.trace(stall.job_id, text)

    def ttl_left(self) -> float:
        if self.deadline is None:
            return 7 * 86400.0
        return max(0.0, self.deadline - self.clock())

    def request_stop(self, reason: str, code: int = exitcodes.OK) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.exit_code = code
            self.log_event(f"stopping: {reason}")
            for a in self.agents.values():
                _native.signal_process(a.proc.pid, signal.SIGTERM)

    def start_agent(self) -> None:
        index = self.next_index
        self.next_index += 1
        cg = self.cgroups.for_agent(index)
        settings = AgentSettings(
            config=self.cfg,
            index=index,
            free_cores=self.free_cores,
            ttl_left=self.ttl_left(),
            memory_mb=self.memory_mb * self.free_cores // max(1, self.cores),
            disk_mb=disk_free_mb(self.cfg.workdir),
            free_gpus=[g for g in self.gpus if g not in self.claimed_gpus],
            cgroup=str(cg) if cg else None,
            cgroup_v1=self.cgroups.v1_for_agent(index),
            batch_id=self.batch_id,
            node_offer=self.node_offer,
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot.pilot.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # The agent reacts to SIGTERM by winding its job down; Ctrl-C at a terminal goes to the runner only.
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        # The settings are the first line; with bulk heartbeats, the hello is the second and stdin stays open for
        # the agent's part of their answers (pilot/runnerlink.py). Both fit the pipe: written before the agent reads.
        proc.stdin.write(settings.to_json() + b"\n")
        if self.bulk is not None:
            proc.stdin.write(orjson.dumps(HELLO) + b"\n")
            proc.stdin.flush()
            os.set_blocking(proc.stdin.fileno(), False)
        else:
            proc.stdin.close()
        os.set_blocking(proc.stdout.fileno(), False)
        agent = AgentProc(index, proc, self.clock(), cg)
        self.agents[index] = agent
        self.sel.register(proc.stdout, selectors.EVENT_READ, agent)

    def _on_event(self, agent: AgentProc, ev: Dict) -> None:
        kind = ev.get("event")
        status = ev.get("status")
        if kind == "error" and isinstance(status, int) and status >= 500:
            # Central (or a proxy in front of it) failing is no answer about work either: an outage, not "no job".
            kind = "unreachable"
        if kind in ("matched", "nomatch", "error") and (kind != "error" or status is not None):
            # Central answered this match, whatever it said (an agent that died before asking had no answer).
            self.central.answered()
            self.outage_backoff.reset()
        if kind == "heartbeat":
            if self.bulk is not None:
                self.bulk.update(agent.index, ev)
            return
        if kind == watchdog.BEAT:
            ended = self.stalls.beat(agent.index, agent.job_id, busy_s=float(ev.get("busy_s") or 0.0),
                                     watching=ev.get("watching", True) is not False)
            if ended is not None:
                self._on_stall(ended)
            return
        if kind == "outage":
            # An agent rode out an outage (its errorConnecting trace line): a failure of this node's link to central,
            # counted at central unless other hosts saw it too (central/nodes.py).
            seconds = float(ev.get("seconds") or 0.0)
            self.log_event(f"agent {agent.index}: central was unreachable for {seconds:.0f} s (errorConnecting)")
            self.node_reports.event(nodereports.ERROR_CONNECTING, seconds, agent.job_id,
                                    f"errorConnecting: central was unreachable for {seconds:.0f} s")
            return
        if kind == "error" and ev.get("code") == NODE_BAD_CODE:
            # Central marked this host nodeBad: no more matching. The jobs already running here are not the
            # reason (central counted failures over a window) and finish; then the runner exits.
            agent.matching = False
            if self.refused is None:
                self.refused = f"central refuses this node work: {ev.get('error', '')}"
                self.log_event(f"{self.refused}; the jobs running here finish, then the runner exits")
            return
        if kind == "matched":
            agent.matching = False
            agent.job_id = int(ev["job_id"])
            agent.cores = int(ev.get("cores", 1))
            agent.gpus = list(ev.get("gpus", []))
            self.free_cores -= agent.cores
            for g in agent.gpus:
                self.claimed_gpus[g] = agent.job_id
            self.empty_matches = 0
            self.backoff = self.cfg.match_backoff
            self.log_event(f"agent {agent.index}: job {agent.job_id} ({agent.cores} core(s)); {self.free_cores} free")
        elif kind == "unreachable":
            # Not an empty match: central may have work and be down for a while. Logged once per change.
            agent.matching = False
            self.central.failed(str(ev.get("error", "")))
            self.next_match = self.clock() + self.outage_backoff.next()
        elif kind == "error" and status in TOKEN_REFUSED_STATUSES:
            agent.matching = False
            self.request_stop(f"central refuses the agent token: {ev.get('error', '')}", exitcodes.TOKEN_REFUSED)
        elif kind in ("nomatch", "error"):
            agent.matching = False
            self.empty_matches += 1
            self.next_match = self.clock() + self.backoff
            self.backoff = min(self.cfg.match_backoff_max, self.backoff * 2)
            why = f": {ev['error']}" if ev.get("error") else ""
            self.log_event(f"agent {agent.index}: {kind}{why} ({self.empty_matches} in a row)")
        elif kind == "done":
            agent.final_state = ev.get("state")
            if agent.job_id is not None:
                self.results[agent.job_id] = str(agent.final_state)
            self.log_event(f"agent {agent.index}: job {ev.get('job_id')} ended {agent.final_state}")
            # Freed cores (or GPUs) may fit a job that did not fit before: match again now.
            self.empty_matches = 0
            self.next_match = self.clock()
            self.backoff = self.cfg.match_backoff
            quick = self.clock() - agent.started < QUICK_FAILURE_S
            if quick and counts_against_node(agent.final_state, ev.get("kill_reason")):
                self.quick_failures += 1
            else:
                self.quick_failures = 0
            if self.quick_failures >= NODE_BAD_AFTER and not self.node_bad:
                # One broken node must not drain the queue: after a run of jobs failing at once, stop matching.
                self.node_bad = True
                self.request_stop(f"nodeBad: {self.quick_failures} jobs in a row failed within {QUICK_FAILURE_S:.0f} s "
                                  "of starting", exitcodes.NODE_UNUSABLE)

    def _read(self, agent: AgentProc) -> None:
        assert agent.proc.stdout is not None
        try:
            chunk = agent.proc.stdout.read()
        except (BlockingIOError, InterruptedError):
            return
        if chunk:
            agent.buf += chunk
            *lines, agent.buf = agent.buf.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        self._on_event(agent, orjson.loads(line))
                    except orjson.JSONDecodeError:
                        log.warning("agent %d wrote a line that is not an event: %r", agent.index, line[:200])

    def _relay(self, index: int, line: Dict) -> None:
        """Queue one line for an agent (its part of a bulk answer) and write what its pipe takes now."""
        agent = self.agents.get(index)
        if agent is None or agent.proc.stdin is None or agent.proc.stdin.closed:
            return
        if len(agent.out) > MAX_RELAY_BACKLOG:
            # An agent that reads nothing for that long is stuck or past its loop: what it would read is old news.
            log.warning("agent %d reads nothing of its relayed answers: %d bytes dropped", index, len(agent.out))
            agent.out = b""
        agent.out += orjson.dumps(line) + b"\n"
        self._write_out(agent)

    def _write_out(self, agent: AgentProc) -> None:
        stdin = agent.proc.stdin
        if not agent.out or stdin is None or stdin.closed:
            return
        try:
            n = os.write(stdin.fileno(), agent.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            agent.out = b""  # the agent is gone (EPIPE): its exit is seen by _reap
            return
        agent.out = agent.out[n:]

    def _reap(self) -> None:
        for index, agent in list(self.agents.items()):
            if agent.proc.poll() is None:
                continue
            self._read(agent)
            stdout = agent.proc.stdout
            assert stdout is not None  # started with stdout=PIPE
            self.sel.unregister(stdout)
            stdout.close()
            if agent.proc.stdin is not None and not agent.proc.stdin.closed:
                try:
                    agent.proc.stdin.close()
                except OSError:
                    pass  # what was left unwritten is of no use to an agent that exited
            if self.bulk is not None:
                self.bulk.forget(index)
            if agent.matching:
                # The agent died before saying whether it matched: count it as a failed match.
                self._on_event(agent, {"event": "error", "error": f"agent exited with {agent.proc.returncode}"})
            self.free_cores += agent.cores
            for g in agent.gpus:
                self.claimed_gpus.pop(g, None)
            del self.agents[index]
            self.stalls.forget(index)
            if agent.proc.returncode != 0:
                self._end_orphans(agent)
            self.cgroups.release_agent(agent.cgroup, index)
        self._reap_orphans()

    def _orphans(self) -> List[int]:
        """The runner's children that are not live agents: processes handed to it as a child subreaper."""
        agents = {a.proc.pid for a in self.agents.values()}
        return [pid for pid in _native.children(os.getpid()) if pid not in agents]

    def _reap_orphans(self) -> None:
        """Reap the orphans handed to the runner that have exited (a runtime's daemonised helper, say), so they do
        not stay zombies; the live ones are left alone."""
        for pid in self._orphans():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def _end_orphans(self, dead: Optional[AgentProc]) -> None:
        """An agent that died without cleaning up (SIGKILL, a crash) leaves its job's processes behind. The runner is
        a child subreaper, so they are handed to it rather than to init: every child of the runner that is not a
        live agent is such an orphan. Nobody watches or reports them any more, so they end here, and the job's work
        directory with them. (Central hears nothing more of the job and ends it when its heartbeats stop.) With
        `dead` None: at the runner's end, whatever orphan is still there."""
        ended = 0
        for pid in self._orphans():
            report = _native.terminate_tree(pid, grace_s=5)
            ended += len(report.terminated) + len(report.killed)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if dead is None:
            if ended:
                self.log_event(f"{ended} orphaned process(es) handed to the runner were ended")
            return
        if ended:
            self.log_event(f"agent {dead.index} exited with {dead.proc.returncode}: {ended} process(es) it left were ended")
        if dead.job_id is not None and dead.final_state is None and not self.cfg.keep_workdir:
            workdir = job_workdir(self.cfg, dead.job_id)
            if workdir.exists():
                shutil.rmtree(workdir, ignore_errors=True)
                self.log_event(f"agent {dead.index}: work directory {workdir} of its job removed")

    def _wait_s(self) -> float:
        """How long to wait for agents' events: until the next match or the slot's end is due. An agent's event or
        exit (its stdout closing, SIGCHLD) and a signal wake the loop at once (self.wakeup), so it need not wake
        every second to look; MAX_WAIT_S bounds the wait all the same."""
        now = self.clock()
        due = [now + MAX_WAIT_S]
        if not self.stopping and self.refused is None and self.free_cores > 0 \
                and not any(a.matching for a in self.agents.values()):
            due.append(self.next_match)
        if self.deadline is not None:
            due.append(self.deadline)
        for extra in (self.stalls.next_due(), self.node_reports.next_due(),
                      self.bulk.due() if self.bulk is not None else None):
            if extra is not None:
                due.append(extra)
        return max(0.01, min(due) - now)

    def step(self) -> bool:
        """One turn of the loop. False when the runner should exit."""
        for key, _ in self.sel.select(timeout=self._wait_s()):
            if key.data is None:
                self.wakeup.drain()  # a signal: its handler has run, what it asked for is seen below
            else:
                self._read(key.data)
        self._reap()
        for stall in self.stalls.check():
            self._on_stall(stall)
        self.node_reports.flush()
        if self.bulk is not None:
            self.bulk.step()
            for agent in self.agents.values():
                self._write_out(agent)
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            self.request_stop(self.deadline_reason)
        running = [a for a in self.agents.values() if not a.matching]
        matching = any(a.matching for a in self.agents.values())
        if not self.stopping and self.empty_matches >= self.cfg.max_empty_matches and not running and not matching:
            self.request_stop(f"{self.empty_matches} empty matches in a row with nothing running")
        if self.refused is not None and not self.agents:
            self.request_stop(self.refused, exitcodes.NODE_UNUSABLE)
        if self.stopping:
            return bool(self.agents)
        if self.refused is None and self.free_cores > 0 and not matching and now >= self.next_match:
            self.start_agent()
        return True

    def run(self, signalled: Sequence[str] = ()) -> int:
        """Match and run jobs until the slot ends; the exit code (exitcodes). `signalled`: the stop signals that came
        before the loop's own handlers were set (start-up, the node check), as run_runner's handler records them."""
        self.log_event(
            f"JobRunner on {self.cfg.node} for {self.cfg.site} / {self.cfg.ce}, central {self.cfg.central_url}: "
            f"{self.cores} core(s), {self.memory_mb} MB, TTL "
            f"{'unlimited' if self.deadline is None else f'{self.deadline - self.started:.0f} s'}"
            f"{' (ends with the agent token: it expires before the slot would)' if self.deadline_reason == TOKEN_EXPIRES else ''}"
            f", {self.gpu_text}, "
            f"batch job {self.batch_id or 'none'}; cgroups: {self.cgroups.reason}"
        )
        self.log_event(jobtrace.installation())  # which of the CE's pilot versions this is (docs/wheels.md)
        # Without a job cgroup, a job's processes are found through the process tree; a subreaper runner keeps them
        # in it when their agent dies without cleaning up (see _end_orphans). It also keeps what a container runtime
        # daemonises (Podman's conmon) from reaching init.
        subreaper.become_subreaper()
        refusal = containers.node_check(self.cfg, _native.cpu_info().arch, self.log_event)
        if refusal is not None:
            # Checked before any match: a job taken here would run without the container the site requires.
            self.log_event(f"JobRunner takes no jobs on this node: {refusal}")
            self._end_orphans(None)
            self.cgroups.close()
            return exitcodes.NODE_UNUSABLE
        self.node_probe = nodeprobe.at_pilot_start(self.cfg, self.log_event)  # for central (issue 20, section 2)
        probepost.at_start(self.cfg, self.node_probe, self.node_reports, self.log_event)  # once per boot, on change
        cpu = _native.cpu_info()
        self.node_offer = sitemap.node_offer(self.node_probe, cpu, self.cfg.arch_override)
        override = sitemap.arch_override_line(self.cfg.arch_override, cpu.arch)
        if override is not None:
            self.log_event(override)
        # The batch system (or an operator) ending the slot before its time: jobs wind down, then exit STOPPED.
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM from the batch system", exitcodes.STOPPED))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("interrupted (SIGINT)", exitcodes.STOPPED))
        if signalled:
            self.request_stop(f"{signalled[0]} during start-up", exitcodes.STOPPED)
        self.wakeup = SignalWakeup()
        self.sel.register(self.wakeup.fd, selectors.EVENT_READ, None)
        # The runner's own loop, which watches the agents', is watched by a thread: nobody reads the runner's events,
        # so a stall of its loop is only logged (the batch system's limits end a runner that truly hangs).
        own = watchdog.Watchdog("JobRunner", timeout_s=max(self.stalls.limit_s, 2 * MAX_WAIT_S)).start()
        try:
            while self.step():
                own.beat()
        finally:
            own.stop()
            self.sel.unregister(self.wakeup.fd)
            self.wakeup.close()
            for a in list(self.agents.values()):
                _native.terminate_tree(a.proc.pid, grace_s=5)
                a.proc.wait()
            self._reap()
            self._end_orphans(None)
            self.cgroups.close()
            self.node_reports.flush()  # one last try (short timeouts): what central did not take is logged
            self.node_reports.close()
            if self.bulk is not None:
                self.bulk.close()
        self.log_event(f"JobRunner done: {len(self.results)} job(s) run; {self.stop_reason}; exit {self.exit_code} "
                       f"({exitcodes.reason(self.exit_code)})")
        return self.exit_code


def run_runner(cfg: PilotConfig) -> int:
    """The runner's whole life, from the start-up checks (pilot/startup.py) to its last job; its exit code
    (exitcodes). An unexpected exception is CRASHED, its traceback in the log."""
    fdlimit.raise_nofile()
    signals: List[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        try:
            ready = startup.prepare(cfg, log.info, lambda: bool(signals))
        except startup.StartupFailure as e:
            log.error("JobRunner cannot start (exit %d, %s): %s", e.code, exitcodes.reason(e.code), e.message)
            return e.code
        if ready is None:
            log.info("JobRunner stopped by %s during start-up: exit %d (stopped)", signals[0], exitcodes.STOPPED)
            return exitcodes.STOPPED
        return JobRunner(ready).run(signalled=signals)
    except Exception:
        log.exception("JobRunner crashed: exit %d (crashed)", exitcodes.CRASHED)
        return exitcodes.CRASHED
