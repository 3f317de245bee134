"""Central SIGKILLed under load, as a site would see it: shared by tests/integration/test_central_kill.py (which asserts
on the outcome) and benches/bench_outage.py (which prints its numbers).

Every piece is a real process: `gridpilot central serve` (SQLite in a temporary state directory, on a fixed port so
the restarted central answers at the same URL), `gridpilot ce` with the local backend, the pilots it forks (its
generated start-up script running `gridpilot runner`), their JobAgents, JobWrappers and payloads. The jobs wait
for a gate file the scenario creates the moment central is killed, so what they do during the outage does not
depend on how long the pilots took to start on a loaded machine:

  short-1, short-2  end DONE a few seconds into the outage
  output            ends a few seconds into the outage with an output file, uploaded then and registered in central's
                    catalogue once it is back (the wrapper waits for it): DONE, the output registered once
  fails             exits 7 a few seconds into the outage: ERROR_E, exit code 7
  ttl               runs until its TTL kills it, about 20 s into the outage: ERROR_E, kill reason TTL
  long              still runs when central comes back, then ends DONE
  killed            killed by its user before the outage: KILLED
  after             submitted once central is back: a pilot runs it, DONE

What is observed: whether the CE process and every pilot's runner lived through the outage, each pilot's exit code
(`pilot.exit`, else the script's "runner exited with N" line), each job's end, each job's trace against the lines
its agent logged ("job N: text", one per trace line it queued, the outage line included), when the CE's first
cycle after the restart reached central (the CE's pilot counts, which each cycle reports last, newer than the
restart), and when each pilot's first call after the restart was answered (from the pilot's log).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import psutil
from support.ce import marked_processes

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.states import JobStatus
from gridpilot.tracefmt import state_of

MARK_VAR = "GRIDPILOT_TEST_OUTAGE_MARK"
SITE = "GRIDPILOT::OUTAGE"
CE = "GRIDPILOT::OUTAGE::CE1"
#: The storage element `central init` configures; the pilots name it as their close SE.
CLOSE_SE = "LOCAL::GRIDPILOT::FILE"
OUTAGE_S = 30.0
#: The TTL job's limit, and how far into the outage it should strike (when the pilots started quickly enough).
TTL_S = 45
TTL_INTO_OUTAGE_S = 20.0

#: The pilots' runner settings (GRIDPILOT_* environment): quick backoffs and heartbeats, a runner that ends after a
#: few empty matches once the work is done, no cgroups (the scenario is about central, not isolation).
PILOT_ENV = {
    "GRIDPILOT_MATCH_BACKOFF": "0.3",
    "GRIDPILOT_MATCH_BACKOFF_MAX": "2.0",
    "GRIDPILOT_MAX_EMPTY_MATCHES": "3",
    "GRIDPILOT_HEARTBEAT_INTERVAL": "1.0",
    "GRIDPILOT_MONITOR_SLOW_S": "1.0",
    "GRIDPILOT_DRAIN_GRACE": "3",
    "GRIDPILOT_CGROUPS": "off",
    "GRIDPILOT_CLOSE_SE": CLOSE_SE,
}

# "2024-05-01 12:00:00,123 gridpilot.agent[42] INFO job 7: text" (the runner's and the agent's log format)
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+)\[(\d+)\] (\w+) (.*)$")
_TRACE_LOG = re.compile(r"^job (\d+): (.*)$")
#: The runner's lines that mean central answered it: a match (a job, or none), or its "answers again" line.
_MATCH_ANSWERED = re.compile(r"^(agent \d+: (nomatch\b|job \d+ \()|central \S+ answers again)")
_EXITED = re.compile(r"runner exited with (\d+)")


def gridpilot(*args: str) -> List[str]:
    return [sys.executable, "-m", "gridpilot", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gated(gate: Path, then: str) -> str:
    """A payload that waits for the gate file, then runs `then` (no quotes inside: it goes into the JDL's -c '...')."""
    return f"while [ ! -e {gate} ]; do sleep 0.2; done; {then}"


def shell_jdl(script: str, ttl: int = 300, **keys: object) -> str:
    lines = ['Executable = "/bin/sh";', f"Arguments = \"-c '{script}'\";", f"TTL = {ttl};", "ForcedKillTimeout = 2;"]
    lines += [f"{k} = {v};" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Expect:
    name: str
    state: str
    exit_code: Optional[int] = None
    kill_reason: Optional[str] = None


EXPECTED = {
    "short-1": Expect("short-1", "DONE", 0),
    "short-2": Expect("short-2", "DONE", 0),
    "fails": Expect("fails", "ERROR_E", 7),
    "ttl": Expect("ttl", "ERROR_E", kill_reason="TTL"),
    "long": Expect("long", "DONE", 0),
    "killed": Expect("killed", "KILLED", kill_reason="KILLED"),
    "after": Expect("after", "DONE", 0),
    "output": Expect("output", "DONE", 0),
}
#: The output file of the "output" job and what it holds.
OUTPUT_NAME, OUTPUT_TEXT = "out.txt", "written during the outage"


class CentralProcess:
    """`gridpilot central serve` as a subprocess on a fixed port; killed with SIGKILL, started again on the same
    state directory and port."""

    def __init__(self, state_dir: Path, port: int, log: Path) -> None:
        self.state_dir = state_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def init(self) -> str:
        """Create the database; the admin token (from the file init writes)."""
        r = subprocess.run(gridpilot("central", "init", "--state-dir", str(self.state_dir)), capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"central init failed ({r.returncode}): {r.stderr}")
        return (self.state_dir / "admin.token").read_text().strip()

    def start(self, timeout: float = 90.0) -> float:
        """Serve; the time central first answered."""
        self.starts += 1
        out = open(self.log, "ab")
        out.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            gridpilot("central", "serve", "--state-dir", str(self.state_dir), "--port", str(self.port),
                      "--sweep-interval", "5", "--log-level", "warning"),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        probe = CentralClient(self.url, None, retries=0, timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.health()
                return time.time()
            except (CentralUnreachable, CentralError):
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"central exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"central did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> float:
        """SIGKILL, as an OOM killer or a power cut would end it: no shutdown, no last answer. The time it died."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        return time.time()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Outcome:
    """What one run of the scenario saw. Times are unix seconds; durations seconds."""

    killed_at: float = 0.0
    back_at: float = 0.0
    jobs: Dict[str, Dict] = field(default_factory=dict)
    #: "name: got STATE/exit/reason, expected ..." for every job that ended elsewhere.
    wrong_states: List[str] = field(default_factory=list)
    #: "name: why" for every job whose output is not registered once, where it should be.
    lost_outputs: List[str] = field(default_factory=list)
    #: Per job: lines its agent logged that its trace lacks, lines its trace has twice, gaps in its keys.
    trace_problems: List[str] = field(default_factory=list)
    trace_lines: int = 0
    duplicated_lines: int = 0
    lost_lines: int = 0
    #: Processes that died during the outage: the CE, pilots' runners.
    died_in_outage: List[str] = field(default_factory=list)
    #: Every pilot's exit code at the end ({pilot directory name: code}); None: never ended.
    pilot_exits: Dict[str, Optional[int]] = field(default_factory=dict)
    ce_alive_at_end: bool = False
    #: From central's return to the CE's first cycle that reached it (its pilot-count report).
    ce_resume_s: Optional[float] = None
    #: Per pilot alive through the outage: from central's return to its first answered call (its log).
    pilot_resume_s: Dict[str, Optional[float]] = field(default_factory=dict)
    runners_at_kill: int = 0

    @property
    def pilots_lost(self) -> List[str]:
        lost = [d for d in self.died_in_outage if d.startswith("pilot")]
        lost += [f"pilot {name} exited {code}" for name, code in self.pilot_exits.items() if code != 0]
        return lost


class Scenario:
    """One run: build the grid under `base`, load it, kill central, bring it back, watch everything end."""

    def __init__(self, base: Path, *, outage_s: float = OUTAGE_S, say: Callable[[str], None] = lambda s: None) -> None:
        self.base = base
        self.outage_s = outage_s
        self.say = say
        self.mark = uuid.uuid4().hex
        self.state_dir = base / "central"
        self.pilot_dir = base / "pilots"
        self.gate = base / "GO"
        self.central = CentralProcess(self.state_dir, free_port(), base / "central.log")
        self.ce_proc: Optional[subprocess.Popen] = None
        self.admin: Optional[CentralClient] = None
        self.user: Optional[CentralClient] = None
        self.ids: Dict[str, int] = {}
        self.outcome = Outcome()

    # -- setting up ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        token = self.central.init()
        self.central.start()
        self.admin = CentralClient(self.central.url, token, retries=3, timeout=30)
        self.user = CentralClient(self.central.url, self.admin.mint_token("user", "alice"), retries=3, timeout=30)
        ce_token = self.base / "ce.token"
        ce_token.write_text(self.admin.mint_token("ce", "ce1", site=SITE, ce=CE) + "\n")
        ce_token.chmod(0o600)
        env = dict(PILOT_ENV)
        env[MARK_VAR] = self.mark
        conf = {
            "central_url": self.central.url, "token_file": str(ce_token), "backend": "local",
            "cores": 1, "memory_mb": 500, "wall_time": 900, "max_queued": 10, "max_running": 10, "per_cycle": 10,
            "install_path": sys.prefix, "pilot_dir": str(self.pilot_dir), "environment": env,
            "cycle_interval": 1.0, "startup_grace": 30.0,
        }
        (self.base / "ce.yaml").write_text(json.dumps(conf))
        self.ce_proc = subprocess.Popen(
            gridpilot("ce", "--config", str(self.base / "ce.yaml")),
            stdout=open(self.base / "ce.out", "wb"), stderr=open(self.base / "ce.err", "wb"),
            stdin=subprocess.DEVNULL, start_new_session=True)

    def submit_load(self) -> None:
        assert self.user is not None
        self.ids["short-1"] = self.user.submit(shell_jdl(gated(self.gate, "sleep 2; echo short 1")), name="short-1")
        self.ids["short-2"] = self.user.submit(shell_jdl(gated(self.gate, "sleep 2; echo short 2")), name="short-2")
        self.ids["fails"] = self.user.submit(shell_jdl(gated(self.gate, "sleep 3; exit 7")), name="fails")
        self.ids["output"] = self.user.submit(shell_jdl(
            gated(self.gate, f"sleep 2; echo {OUTPUT_TEXT} > {OUTPUT_NAME}"),
            OutputFile=f'{{"{OUTPUT_NAME}@disk=1"}}'), name="output")
        self.ids["ttl"] = self.user.submit(shell_jdl("sleep 600", ttl=TTL_S), name="ttl")
        # Ends well after central is back (the outage plus its restart), so heartbeats must pick up again.
        self.ids["long"] = self.user.submit(shell_jdl(gated(self.gate, f"sleep {self.outage_s + 15:.0f}")),
                                            name="long")
        self.ids["killed"] = self.user.submit(shell_jdl("sleep 600"), name="killed")

    # -- observing ----------------------------------------------------------------------------------------------
    def job(self, name: str) -> Dict:
        assert self.user is not None
        return self.user.get_job(self.ids[name])

    def wait(self, what: str, cond: Callable[[], bool], timeout: float, step: float = 0.3) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self.check_ce_alive(what)
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout:.0f} s\n{self.describe()}")
            time.sleep(step)

    def check_ce_alive(self, when: str) -> None:
        if self.ce_proc is not None and self.ce_proc.poll() is not None:
            raise AssertionError(f"the CE exited with {self.ce_proc.returncode} ({when})\n{self.describe()}")

    def running_since(self, name: str) -> Optional[float]:
        assert self.user is not None
        for e in self.user.trace(self.ids[name]):
            if e["category"] == "state" and state_of(e["text"]) == "RUNNING":
                # When it started running on the node (the agent's time, as central accepted it).
                return float(e["ts"] if e.get("reported_ts") is None else e["reported_ts"])
        return None

    def pilots(self) -> List[Path]:
        return sorted(d for d in self.pilot_dir.glob("*") if d.is_dir())

    def pilot_exit(self, d: Path) -> Optional[int]:
        f = d / "pilot.exit"
        try:
            return int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        try:
            m = _EXITED.findall((d / "pilot.out").read_text(errors="replace"))
        except OSError:
            return None
        return int(m[-1]) if m else None

    def runners(self) -> Dict[int, Tuple[float, str]]:
        """The pilots' live runner processes: {pid: (start time, pilot directory name)}."""
        out: Dict[int, Tuple[float, str]] = {}
        for p in psutil.process_iter():
            try:
                if p.status() == psutil.STATUS_ZOMBIE or p.environ().get(MARK_VAR) != self.mark:
                    continue
                argv = p.cmdline()
                if "runner" not in argv[1:] or any("gridpilot.pilot" in a for a in argv):
                    continue
                token_file = p.environ().get("GRIDPILOT_TOKEN_FILE", "")
                out[p.pid] = (p.create_time(), Path(token_file).parent.name)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def marked(self) -> List[psutil.Process]:
        return marked_processes(self.mark, MARK_VAR)

    def ce_reported_at(self) -> Optional[float]:
        """When the CE's last cycle reached central (its pilot counts), read from central's database."""
        try:
            with sqlite3.connect(f"file:{self.state_dir / 'central.db'}?mode=ro", uri=True, timeout=5) as db:
                row = db.execute("SELECT updated FROM ce_pilots WHERE site = ? AND ce = ?", (SITE, CE)).fetchone()
        except sqlite3.Error:
            return None
        return float(row[0]) if row else None

    def logs(self) -> Dict[str, List[Tuple[float, str, str]]]:
        """Each pilot's log lines: {pilot directory name: [(unix time, logger, message)]}."""
        out: Dict[str, List[Tuple[float, str, str]]] = {}
        for d in self.pilots():
            lines = []
            try:
                text = (d / "pilot.out").read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                m = _LOG_LINE.match(line)
                if m:
                    t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    lines.append((t, m.group(2), m.group(5)))
            out[d.name] = lines
        return out

    def describe(self) -> str:
        parts = []
        if self.user is not None:
            for name, jid in self.ids.items():
                try:
                    j = self.user.get_job(jid)
                    trace = "\n".join(f"  {e['ts']:.2f} {e['category']:<8} {e['key'] or '-':<22} {e['text']}"
                                      for e in self.user.trace(jid))
                    parts.append(f"--- {name} (job {jid}) {j['state']}:\n{trace}")
                except (CentralError, CentralUnreachable) as e:
                    parts.append(f"--- {name} (job {jid}): {e}")
        for f in ("ce.out", "ce.err"):
            try:
                parts.append(f"--- {f}:\n" + (self.base / f).read_text(errors="replace")[-3000:])
            except OSError:
                pass
        for d in self.pilots()[-8:]:
            try:
                parts.append(f"--- {d.name}/pilot.out:\n" + (d / "pilot.out").read_text(errors="replace")[-2500:])
            except OSError:
                pass
        parts.append("--- central.log:\n" + self.central.log_tail(2000))
        return "\n".join(parts)

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        o = self.outcome
        self.start()
        self.submit_load()
        self.say(f"central on {self.central.url}, CE started, {len(self.ids)} jobs submitted")
        running = ("short-1", "short-2", "fails", "output", "long", "killed")

        def in_place() -> bool:
            # The TTL job may already have met its TTL on a machine slow to start the others: that end is right too.
            ttl = self.job("ttl")["state"]
            return (ttl == "RUNNING" or JobStatus[ttl].is_final) and all(
                self.job(n)["state"] == "RUNNING" for n in running)

        self.wait("every job RUNNING", in_place, 240)
        # The TTL strikes TTL_INTO_OUTAGE_S into the outage when the pilots started quickly enough to allow it.
        since = self.running_since("ttl")
        assert since is not None
        self.wait("the TTL job's time", lambda: time.time() >= since + TTL_S - TTL_INTO_OUTAGE_S, TTL_S)
        assert self.user is not None
        self.user.kill(self.ids["killed"])
        self.wait("the killed job KILLED", lambda: self.job("killed")["state"] == "KILLED", 60, step=0.05)
        # Central goes at once: the killed job's pilot is then looking for more work (its agent still winding
        # down, or a match under way), so the outage finds one pilot idle and matching, the others busy.
        self.say("load in place: " + ", ".join(f"{n} {self.job(n)['state']}" for n in self.ids))
        before = self.runners()
        o.runners_at_kill = len(before)
        o.killed_at = self.central.kill()
        self.gate.touch()
        self.say(f"central SIGKILLed; {len(before)} runners alive; down for {self.outage_s:.0f} s")
        dead: Dict[str, str] = {}
        while time.time() < o.killed_at + self.outage_s:
            if self.ce_proc is not None and self.ce_proc.poll() is not None and "ce" not in dead:
                dead["ce"] = f"CE exited with {self.ce_proc.returncode} {time.time() - o.killed_at:.1f} s into the outage"
            alive = self.runners()
            for pid, (started, name) in before.items():
                if alive.get(pid, (None,))[0] != started and name not in dead:
                    dead[name] = (f"pilot {name} (runner {pid}) ended {time.time() - o.killed_at:.1f} s into the "
                                  f"outage, exit {self.pilot_exit(self.pilot_dir / name)}")
            time.sleep(0.5)
        o.died_in_outage = sorted(dead.values(), key=lambda s: not s.startswith("CE"))
        o.back_at = self.central.start()
        self.say(f"central back after {o.back_at - o.killed_at:.1f} s")
        self.ids["after"] = self.user.submit(shell_jdl("echo after the outage"), name="after")

        # The CE's first cycle to reach central after its return; the jobs' ends; the pilots leaving.
        names = list(self.ids)
        deadline = time.monotonic() + 300
        while True:
            if o.ce_resume_s is None:
                at = self.ce_reported_at()
                if at is not None and at > o.back_at:
                    o.ce_resume_s = at - o.back_at
            ce_done = o.ce_resume_s is not None or (self.ce_proc is not None and self.ce_proc.poll() is not None)
            jobs = {n: self.job(n) for n in names}
            if all(JobStatus[j["state"]].is_final for j in jobs.values()) and ce_done:
                break
            if time.monotonic() > deadline:
                raise AssertionError("not every job ended after central came back: "
                                     + ", ".join(f"{n}={j['state']}" for n, j in jobs.items())
                                     + f"; CE resumed: {o.ce_resume_s}\n{self.describe()}")
            time.sleep(0.1)
        o.jobs = jobs
        # Each pilot leaves once it finds no more work; a dead CE is no reason to wait less (its pilots go on).
        # And each pilot's start-up script has written its runner's exit code (pilot.exit): it does so just after the
        # runner exits, and a loaded machine once read the file in between (an exit of None, a pilot "lost").
        deadline = time.monotonic() + 180
        while self.runners() or any(self.pilot_exit(d) is None for d in self.pilots()):
            if time.monotonic() > deadline:
                raise AssertionError(f"pilots still running, or without their exit code, 180 s after the jobs "
                                     f"ended\n{self.describe()}")
            time.sleep(0.5)
        o.ce_alive_at_end = self.ce_proc is not None and self.ce_proc.poll() is None
        o.pilot_exits = {d.name: self.pilot_exit(d) for d in self.pilots()}
        self._judge_states()
        self._judge_outputs()
        self._judge_traces()
        self._pilot_resume(before)
        return o

    def _judge_states(self) -> None:
        o = self.outcome
        for name, want in EXPECTED.items():
            j = o.jobs[name]
            got = (j["state"], j["exit_code"], j["kill_reason"])
            ok = j["state"] == want.state
            if want.exit_code is not None:
                ok = ok and j["exit_code"] == want.exit_code
            if want.kill_reason is not None:
                ok = ok and j["kill_reason"] == want.kill_reason
            if not ok:
                o.wrong_states.append(f"{name} (job {j['id']}): got {got}, expected "
                                      f"{(want.state, want.exit_code, want.kill_reason)}")

    def _judge_outputs(self) -> None:
        """The output job's file: registered once, its one replica on the storage element holding what was written."""
        o = self.outcome
        assert self.user is not None
        job = o.jobs["output"]
        lfn = f"{job['output_dir']}/{OUTPUT_NAME}"
        try:
            entry = self.user.lookup_file(lfn)
        except CentralError as e:
            o.lost_outputs.append(f"output (job {job['id']}): {lfn} not in the catalogue: {e}")
            return
        if len(entry["replicas"]) != 1:
            o.lost_outputs.append(f"output (job {job['id']}): {lfn} has replicas {entry['replicas']}, not one")
            return
        pfn = entry["replicas"][0]["pfn"]
        path = Path(pfn[len("file://"):]) if pfn.startswith("file://") else None
        try:
            held = path.read_text() if path is not None else None
        except OSError as e:
            held = f"unreadable: {e}"
        if held != OUTPUT_TEXT + "\n":
            o.lost_outputs.append(f"output (job {job['id']}): {pfn} holds {held!r}, not what the job wrote")

    def _judge_traces(self) -> None:
        """Each job's keyed trace lines against what its agents logged: the same lines, each once, and each run's
        keys numbered 1..n without a gap."""
        o = self.outcome
        assert self.user is not None
        logged: Dict[int, Counter] = {}
        for lines in self.logs().values():
            for _, logger, msg in lines:
                m = _TRACE_LOG.match(msg)
                if m and logger in ("gridpilot.agent", "gridpilot.pilot.outbox"):
                    logged.setdefault(int(m.group(1)), Counter())[m.group(2)] += 1
        for name, jid in self.ids.items():
            entries = [e for e in self.user.trace(jid) if e["key"] is not None]
            o.trace_lines += len(entries)
            # A text with a newline is logged over several lines: compare first lines.
            have = Counter(e["text"].split("\n")[0] for e in entries)
            want = logged.get(jid, Counter())
            lost, extra = want - have, have - want
            o.lost_lines += sum(lost.values())
            o.duplicated_lines += sum(extra.values())
            if lost:
                o.trace_problems.append(f"{name} (job {jid}): logged by its agent, missing from its trace: "
                                        f"{sorted(lost.elements())[:10]}")
            if extra:
                o.trace_problems.append(f"{name} (job {jid}): in its trace more often than its agent logged: "
                                        f"{sorted(extra.elements())[:10]}")
            runs: Dict[str, List[int]] = {}
            for e in entries:
                prefix, _, n = e["key"].rpartition(".")
                runs.setdefault(prefix, []).append(int(n))
            for prefix, seqs in runs.items():
                if sorted(seqs) != list(range(1, len(seqs) + 1)):
                    o.trace_problems.append(f"{name} (job {jid}): run {prefix} has keys {sorted(seqs)}, not 1..n")

    def _pilot_resume(self, before: Dict[int, Tuple[float, str]]) -> None:
        """For each pilot alive through the outage: its first answered call after central came back (an agent's
        outage line, written when central first answered it, or the runner's answered match)."""
        o = self.outcome
        logs = self.logs()
        for _, name in before.values():
            first = None
            for t, logger, msg in logs.get(name, []):
                if t < o.back_at - 0.01:
                    continue
                m = _TRACE_LOG.match(msg)
                outage_line = m is not None and m.group(2).startswith("errorConnecting:")
                match_answered = logger == "gridpilot.runner" and _MATCH_ANSWERED.match(msg) is not None
                if outage_line or match_answered:
                    first = t
                    break
            o.pilot_resume_s[name] = None if first is None else max(0.0, first - o.back_at)

    # -- ending -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.ce_proc is not None and self.ce_proc.poll() is None:
            self.ce_proc.send_signal(signal.SIGTERM)
            try:
                self.ce_proc.wait(60)
            except subprocess.TimeoutExpired:
                self.ce_proc.kill()
                self.ce_proc.wait(10)
        self.central.stop()
        for p in self.marked():
            try:
                p.kill()
            except psutil.Error:
                pass


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
