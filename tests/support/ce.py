"""A grid for the computing element's end-to-end tests: a real central (EmbeddedCentral, SQLite), a CE token, and a
Factory on a real back end (Slurm from tests/support/slurm_cluster.py, or local fork) whose pilots run this checkout's
`gridpilot runner`. Every pilot process carries a marker variable (the CE's `environment`), so a test can prove that
nothing of its pilots is left, and that no process of theirs holds the agent token in its argv or environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Sequence

import psutil

from gridpilot.ce import make_backend
from gridpilot.ce.factory import CycleReport, Factory
from gridpilot.ce.settings import CESettings
from gridpilot.central.serve import DEFAULT_SE_NAME
from gridpilot.client import CentralClient
from gridpilot.states import JobStatus

MARK_VAR = "GRIDPILOT_TEST_CE_MARK"
SITE = "GRIDPILOT::CETEST"
CE = "GRIDPILOT::CETEST::CE1"


def marked_processes(mark: str, var: str = MARK_VAR) -> List[psutil.Process]:
    """The live processes whose environment has `var` set to this test's mark: what a test started and must end."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(var) == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found

#: The pilots' runner settings, through the GRIDPILOT_* environment layer: quick backoffs, heartbeats every second,
#: and a runner that ends after a few empty matches so a pilot with no more work leaves its slot.
FAST_PILOT_ENV = {
    "GRIDPILOT_MATCH_BACKOFF": "0.3",
    "GRIDPILOT_MATCH_BACKOFF_MAX": "1.0",
    "GRIDPILOT_MAX_EMPTY_MATCHES": "3",
    "GRIDPILOT_HEARTBEAT_INTERVAL": "1.0",
    "GRIDPILOT_MONITOR_SLOW_S": "1.0",
    "GRIDPILOT_DRAIN_GRACE": "3",
    "GRIDPILOT_CGROUPS": "off",
    # The storage element `central init` configures: a runner without a close one does not start.
    "GRIDPILOT_CLOSE_SE": DEFAULT_SE_NAME,
}


def shell_jdl(script: str, ttl: int = 300) -> str:
    return f'Executable = "/bin/sh";\nArguments = "-c \'{script}\'";\nTTL = {ttl};\nForcedKillTimeout = 2;\n'


@dataclass
class CEGrid:
    base: Path
    central: Any
    admin: CentralClient
    user: CentralClient
    ce_token_file: Path
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    factories: List[Factory] = field(default_factory=list)

    def settings(self, backend: str, **over: Any) -> CESettings:
        env = dict(FAST_PILOT_ENV)
        env[MARK_VAR] = self.mark
        env.update(over.pop("environment", {}))
        values: Dict[str, Any] = dict(
            central_url=self.central.url, token_file=str(self.ce_token_file), backend=backend,
            cores=1, memory_mb=500, wall_time=900, max_queued=20, max_running=20, per_cycle=20,
            install_path=sys.prefix, pilot_dir=str(self.base / f"pilots-{backend}"), environment=env,
            cycle_interval=1.0, startup_grace=30.0,
        )
        values.update(over)
        return CESettings(**values)

    def ce_yaml(self, path: Path, backend: str = "local", **over: Any) -> Path:
        """These settings as a configuration file for `gridpilot ce` (JSON is YAML)."""
        s = self.settings(backend, **over)
        path.write_text(json.dumps({k: v for k, v in dataclasses.asdict(s).items() if v not in (None, [], {})}))
        return path

    def factory(self, backend: str, **over: Any) -> Factory:
        s = self.settings(backend, **over)
        client = CentralClient(s.central_url, s.token(), timeout=30, retries=2)
        f = Factory(s, client, make_backend(s, CE), site=SITE, ce=CE)
        self.factories.append(f)
        return f

    def job(self, job_id: int) -> Dict[str, Any]:
        return self.user.get_job(job_id)

    def trace_text(self, job_id: int) -> str:
        return "\n".join(f"{e['category']:<8} {e['text']}" for e in self.user.trace(job_id))

    def drive(self, f: Factory, until: Any, timeout: float, what: str, step: float = 0.5) -> List[CycleReport]:
        """Run CE cycles until `until()` is true; the reports. AssertionError with the pilots' outputs if not."""
        reports: List[CycleReport] = []
        deadline = time.monotonic() + timeout
        while True:
            reports.append(f.cycle())
            if until():
                return reports
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout:.0f} s; last cycle: {reports[-1].summary()} "
                                     f"errors {reports[-1].errors}\n{self.pilot_outputs(f)}")
            time.sleep(step)

    def wait_jobs(self, f: Factory, ids: Sequence[int], states: Iterable[str], timeout: float) -> List[Dict[str, Any]]:
        want = set(states)
        jobs: List[Dict[str, Any]] = []

        def done() -> bool:
            nonlocal jobs
            jobs = [self.job(i) for i in ids]
            return all(j["state"] in want for j in jobs)

        try:
            self.drive(f, done, timeout, f"jobs {list(ids)} in {sorted(want)}")
        except AssertionError as e:
            detail = "\n".join(f"--- job {j['id']} {j['state']}:\n{self.trace_text(j['id'])}" for j in jobs)
            raise AssertionError(f"{e}\n{detail}") from None
        return jobs

    def pilot_outputs(self, f: Factory, tail: int = 3000) -> str:
        out = []
        for p in sorted(Path(f.settings.pilot_dir).glob("*/pilot.out")):
            out.append(f"--- {p}:\n{p.read_text(errors='replace')[-tail:]}")
        return "\n".join(out[-4:])

    # -- what must be gone, what must not be seen -----------------------------------------------------------------
    def marked_processes(self) -> List[psutil.Process]:
        return marked_processes(self.mark)

    def leftovers(self, wait_s: float = 20.0) -> List[str]:
        deadline = time.monotonic() + wait_s
        while True:
            left = []
            for p in self.marked_processes():
                try:
                    left.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
                except psutil.Error:
                    continue
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.3)

    def kill_leftovers(self) -> None:
        for p in self.marked_processes():
            try:
                p.kill()
            except psutil.Error:
                pass

    def close(self) -> None:
        for f in self.factories:
            f.close()


class CEProcess:
    """`gridpilot ce --config FILE` as a process of its own, its stdout and stderr in files to wait on."""

    def __init__(self, conf: Path, logs: Path, *args: str) -> None:
        self.out_path, self.err_path = logs / "ce.out", logs / "ce.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "ce", "--config", str(conf), *args],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.err))

    def wait(self, what: str, until: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if self.proc.poll() is not None:
                raise AssertionError(f"the CE exited ({self.proc.returncode}) waiting for {what}:\n{self.out[-3000:]}"
                                     f"\n{self.err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not after {timeout:.0f} s: {what}\n{self.out[-3000:]}\n{self.err[-3000:]}")
            time.sleep(0.1)

    def wait_err(self, pattern: str, n: int = 1, timeout: float = 60.0) -> None:
        self.wait(f"{n} x {pattern!r} on stderr", lambda: self.count(pattern) >= n, timeout)

    def metrics_url(self, timeout: float = 60.0) -> str:
        self.wait("the metrics URL", lambda: "metrics on http" in self.out, timeout)
        return re.search(r"metrics on (http://\S+)", self.out).group(1)  # type: ignore[union-attr]

    def stop(self, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> "CEProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.stop()


@contextmanager
def ce_grid(base: Path) -> Iterator[CEGrid]:
    from gridpilot.central.serve import EmbeddedCentral

    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    with EmbeddedCentral(base / "central", sweep_interval_s=0) as central:
        admin = CentralClient(central.url, central.admin_token, retries=0, timeout=30)
        user = CentralClient(central.url, admin.mint_token("user", "alice"), retries=0, timeout=30)
        token_file = base / "ce.token"
        token_file.write_text(admin.mint_token("ce", "ce1", site=SITE, ce=CE))
        token_file.chmod(0o600)
        grid = CEGrid(base, central, admin, user, token_file)
        try:
            yield grid
        finally:
            grid.close()
            left = grid.leftovers(wait_s=5.0)
            if left:
                grid.kill_leftovers()
            assert not left, "the CE's pilots left behind:\n  " + "\n  ".join(left)


def final(state: str) -> bool:
    return JobStatus[state].is_final
