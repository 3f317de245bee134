"""`gridpilot demo`: a whole grid on this machine. An embedded central service (SQLite in a temporary state
directory), a `file://` storage element, example jobs submitted, a JobRunner with several agents pulling them, live
progress, and a summary at the end.

`LocalGrid` is the same setup as a context manager, for the end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import orjson

from gridpilot.central.serve import EmbeddedCentral
from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig
from gridpilot.errors import JdlError
from gridpilot.jdl import String, load_document, write
from gridpilot.states import JobStatus
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.placement import new_pfn

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples" / "demo"
PAYLOADS = ROOT / "examples" / "payloads"
SE_NAME = "LOCAL::DEMO::FILE"
#: Where the demo puts local files a job names, in the catalogue.
DEMO_LFN_DIR = "/gridpilot/demo"


@dataclass
class DemoJob:
    name: str
    jdl: str
    expect_state: Optional[str] = None
    expect_reason: Optional[str] = None
    job_id: int = 0
    final: Dict[str, Any] = field(default_factory=dict)


class LocalGrid:
    """Central, one file:// storage element, tokens, and a JobRunner on this machine."""

    def __init__(self, state_dir: Path, *, site: str = "LOCAL", ce: str = "LOCAL::CE", **pilot: Any) -> None:
        self.state_dir = Path(state_dir)
        self.site = site
        self.ce = ce
        self.pilot_overrides = pilot
        self.stack = ExitStack()
        self.runner: Optional[subprocess.Popen] = None

    def __enter__(self) -> LocalGrid:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.central = self.stack.enter_context(EmbeddedCentral(self.state_dir / "central"))
        self.admin = self.central.client()
        se_dir = self.state_dir / "se"
        se_dir.mkdir(exist_ok=True)
        self.se = LocalStorageElement(SE_NAME, f"file://{se_dir}")
        self.admin.add_storage_element(SE_NAME, f"file://{se_dir}")
        self.user_token = self.admin.mint_token("user", os.environ.get("USER") or "demo")
        self.user = CentralClient(self.central.url, self.user_token)
        agent_token = self.admin.mint_token("agent", f"pilot@{os.uname().nodename}", site=self.site, ce=self.ce)
        self.token_file = self.state_dir / "agent.token"
        self.token_file.write_text(agent_token)
        self.token_file.chmod(0o600)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_runner()
        self.stack.close()

    def register_local_file(self, path: Path, lfn: str) -> None:
        """Copy a local file onto the storage element (verified) and register it in the catalogue."""
        pfn = new_pfn(self.se)
        digest = self.se.put(path, pfn)
        self.admin.register_file(lfn=lfn, size=digest.size, adler32=digest.adler32, md5=digest.md5, se=SE_NAME, pfn=pfn)

    def pilot_config(self, **overrides: Any) -> PilotConfig:
        values: Dict[str, Any] = dict(
            central_url=self.central.url,
            token_file=str(self.token_file),
            site=self.site,
            ce=self.ce,
            workdir=str(self.state_dir / "work"),
            close_se=[SE_NAME],
            heartbeat_interval=5.0,
            match_backoff=0.5,
            match_backoff_max=2.0,
            max_empty_matches=3,
        )
        values.update(self.pilot_overrides)
        values.update(overrides)
        return PilotConfig(**values)

    def start_runner(self, log: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                     **overrides: Any) -> subprocess.Popen:
        """Start `gridpilot runner` with this grid's configuration (plus `overrides`); `env` adds variables to its
        environment, which the agents, wrappers and payloads inherit (the tests mark their processes so)."""
        cfg = self.pilot_config(**overrides)
        conf = self.state_dir / "pilot.yaml"
        conf.write_bytes(orjson.dumps({k: v for k, v in cfg.__dict__.items() if v is not None}))  # JSON is YAML
        runner_env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        runner_env.update(env or {})
        with open(log or self.state_dir / "runner.log", "ab") as out:
            self.runner = subprocess.Popen(
                [sys.executable, "-m", "gridpilot", "runner", "--config", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=runner_env,
            )
        return self.runner

    def stop_runner(self, timeout: float = 60) -> Optional[int]:
        if self.runner is None:
            return None
        if self.runner.poll() is None:
            self.runner.terminate()
            try:
                self.runner.wait(timeout)
            except subprocess.TimeoutExpired:
                from gridpilot import _native

                _native.terminate_tree(self.runner.pid, grace_s=5)
                self.runner.wait()
        return self.runner.returncode

    def wait(self, ids: Sequence[int], timeout: float, on_tick: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [self.user.get_job(i) for i in ids]
            if on_tick is not None:
                on_tick(jobs)
            if all(JobStatus[j["state"]].is_final for j in jobs) or time.monotonic() > deadline:
                return jobs
            time.sleep(0.5)


def _prepare(grid: LocalGrid, path: Path) -> DemoJob:
    """Read a JDL; a local Executable is put in the catalogue first and the job points at it there, as a grid job
    names its executable by LFN. An absolute path to a program on every node (/bin/sh) stays as it is."""
    doc = load_document(path)
    exe_value = doc.get("Executable")
    exe = exe_value.value if isinstance(exe_value, String) else None
    if exe is not None:
        if exe.startswith(DEMO_LFN_DIR + "/"):
            grid.register_local_file(PAYLOADS / Path(exe).name, exe)
        elif not os.path.isabs(exe) and (path.parent / exe).is_file():
            lfn = f"{DEMO_LFN_DIR}/bin/{Path(exe).name}"
            grid.register_local_file(path.parent / exe, lfn)
            doc = doc.with_value("Executable", String(lfn))
    expect = doc.get("DemoExpect")
    reason = doc.get("DemoExpectKillReason")
    return DemoJob(path.stem, write(doc), getattr(expect, "value", None), getattr(reason, "value", None))


def _demo_inputs(grid: LocalGrid, workdir: Path) -> None:
    """The data file the analysis example reads."""
    data = workdir / "events.csv"
    data.write_text("".join(f"{i},{i * 0.5:.1f},{i % 7}\n" for i in range(1000)))
    grid.register_local_file(data, f"{DEMO_LFN_DIR}/data/events.csv")


def _progress_line(jobs: List[Dict[str, Any]], t0: float) -> str:
    counts: Dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    return f"[{time.monotonic() - t0:5.1f}s] " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def run_demo(files: Sequence[str] = (), *, as_json: bool = False, timeout: float = 300.0, cores: int = 0) -> int:
    live = sys.stdout.isatty() and not as_json
    out = sys.stderr if as_json else sys.stdout
    paths = [Path(f) for f in files] or sorted(EXAMPLES.glob("*.jdl"))
    with tempfile.TemporaryDirectory(prefix="gridpilot-demo-") as tmp, LocalGrid(Path(tmp)) as grid:
        print(f"central: {grid.central.url} (SQLite in {tmp}/central); storage: {SE_NAME} (file://{tmp}/se)", file=out)
        _demo_inputs(grid, Path(tmp))
        jobs: List[DemoJob] = []
        for p in paths:
            try:
                job = _prepare(grid, p)
            except (JdlError, OSError) as e:
                print(f"{p}: {e}", file=sys.stderr)
                return 2
            job.job_id = grid.user.submit(job.jdl, name=p.name)
            jobs.append(job)
            print(f"submitted {p.name} as job {job.job_id}", file=out)
        runner = grid.start_runner(cores=cores or max(2, os.cpu_count() or 2))
        print(f"JobRunner started (pid {runner.pid}); its log: {tmp}/runner.log", file=out)
        t0 = time.monotonic()
        last = [""]

        def tick(states: List[Dict[str, Any]]) -> None:
            line = _progress_line(states, t0)
            if live:
                lines = [line] + [f"  job {s['id']:>4} {jobs[i].name:<20} {s['state']}" for i, s in enumerate(states)]
                sys.stdout.write("\033[K" + "\n\033[K".join(lines) + f"\033[{len(lines) - 1}F\r")
                sys.stdout.flush()
            elif line.split("] ", 1)[1] != last[0]:
                print(line, file=out)
                last[0] = line.split("] ", 1)[1]

        final = grid.wait([j.job_id for j in jobs], timeout, tick)
        if live:
            sys.stdout.write("\n" * (len(jobs) + 1))
        rc_runner = grid.stop_runner()
        ok = True
        print(f"\n{'job':>5}  {'example':<20} {'state':<10} {'kill reason':<13} {'expected':<10} ok", file=out)
        for job, state in zip(jobs, final):
            job.final = state
            good = (job.expect_state is None or state["state"] == job.expect_state) and (
                job.expect_reason is None or state.get("kill_reason") == job.expect_reason)
            ok &= good
            print(f"{job.job_id:>5}  {job.name:<20} {state['state']:<10} {str(state.get('kill_reason') or '-'):<13} "
                  f"{(job.expect_state or 'final'):<10} {'yes' if good else 'NO'}", file=out)
        show = next((j for j in jobs if j.final.get("state") == "DONE"), jobs[0] if jobs else None)
        if show is not None and not as_json:
            print(f"\ntrace of job {show.job_id} ({show.name}):", file=out)
            for e in grid.user.trace(show.job_id):
                print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['category']:<8} {e['text']}", file=out)
        if as_json:
            for job in jobs:
                sys.stdout.write(orjson.dumps({
                    "id": job.job_id, "name": job.name, "state": job.final.get("state"),
                    "kill_reason": job.final.get("kill_reason"), "exit_code": job.final.get("exit_code"),
                }).decode() + "\n")
        print(f"\nJobRunner exited with {rc_runner}; " + ("every job ended as expected" if ok else "some jobs did NOT end as expected"), file=out)
        return 0 if ok else 1
