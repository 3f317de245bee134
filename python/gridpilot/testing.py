"""A whole grid on this machine, `LocalGrid`: an embedded central service (SQLite in a state directory), one
`file://` storage element, tokens, and either a JobRunner started directly (`start_runner`) or a computing element
forking pilots (`start_ce`). The end-to-end tests and benches run their jobs on it, and `gridpilot demo` shows it.
"""

from __future__ import annotations

import os
import shlex
import site
import subprocess
import sys
import sysconfig
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import orjson

from gridpilot.ce.backend import FINAL_STATES
from gridpilot.ce.command import build_factory
from gridpilot.ce.factory import CycleReport, Factory
from gridpilot.ce.script import SLOT_TTL_MARGIN_S
from gridpilot.ce.settings import CESettings
from gridpilot.central.serve import EmbeddedCentral
from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig
from gridpilot.jdl.model import DEFAULT_TTL
from gridpilot.private_files import write_private
from gridpilot.states import JobStatus
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.placement import new_pfn

SE_NAME = "LOCAL::DEMO::FILE"
#: A pilot's memory per core when no job asks for more (the broker compares it with MemorySize).
PILOT_MEMORY_PER_CORE_MB = 1000


def _package_root() -> str:
    """The directory this process imported gridpilot from (a source tree, or site-packages)."""
    import gridpilot

    return os.path.realpath(Path(gridpilot.__file__).resolve().parent.parent)


def _is_our_console_script(console: Path) -> bool:
    """`console` is the console script pip or maturin wrote for this interpreter's environment (its #! names an
    interpreter in the same directory as ours, and the same file), and a pilot without PYTHONPATH would import
    the same gridpilot through it as this process did."""
    if console.parent.name != "bin" or not os.access(console, os.X_OK):
        return False
    try:
        with open(console, "rb") as fh:
            first = fh.readline().decode(errors="replace").strip()
    except OSError:
        return False
    interpreter = first[2:].strip() if first.startswith("#!") else ""
    try:
        # normpath: an interpreter started by a relative path (../../.venv/bin/python from tests/integration) has
        # a sys.executable with `..` in it, the same directory as the #! line's absolute one.
        same = (os.path.normpath(os.path.dirname(interpreter)) == os.path.normpath(os.path.dirname(sys.executable))
                and os.path.samefile(interpreter, sys.executable))
    except OSError:
        return False
    from_pythonpath = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    return same and _package_root() not in from_pythonpath


def pilot_install_path(state_dir: Path, scripts_dir: Optional[Path] = None) -> str:
    """The `install_path` for this machine's CE pilots: they run `<install_path>/bin/gridpilot runner` (ce/script.py).

    The running interpreter's environment when its scripts directory (`.venv/bin` of a clone after `make setup`,
    or where `pip install .` put the console script) holds our `gridpilot`. Otherwise a `bin/gridpilot` shim under
    `state_dir` that runs `<this interpreter> -m gridpilot`: the console script is not always there or not always
    ours (`python -m gridpilot` from a source tree on PYTHONPATH has none; `pip install --user` and Debian's
    /usr/local scheme put it elsewhere; another interpreter's pip may have written one), and a pilot must run the
    gridpilot of the demo that reads its results."""
    scripts = Path(sysconfig.get_path("scripts")) if scripts_dir is None else scripts_dir
    if _is_our_console_script(scripts / "gridpilot"):
        return str(scripts.parent)
    shim = Path(state_dir) / "install" / "bin" / "gridpilot"
    shim.parent.mkdir(parents=True, exist_ok=True)
    root = _package_root()
    lines = ["#!/bin/sh"]
    # The pilots inherit no PYTHONPATH (the local backend passes only PATH and the locale): name the directory this
    # gridpilot was imported from, unless it is a site directory, which the interpreter finds itself and which
    # must not go before the standard library on sys.path.
    site_dirs = {os.path.realpath(d) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in site_dirs:
        lines.append(f"PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH")
    lines.append(f'exec {shlex.quote(sys.executable)} -m gridpilot "$@"')
    shim.write_text("\n".join(lines) + "\n")
    shim.chmod(0o755)
    return str(shim.parent.parent)


class LocalGrid:
    """Central, one file:// storage element, tokens, and either a JobRunner on this machine (start_runner) or a
    computing element forking pilots on it (start_ce)."""

    def __init__(self, state_dir: Path, *, site: str = "LOCAL", ce: str = "LOCAL::CE",
                 central: Optional[Dict[str, Any]] = None, **pilot: Any) -> None:
        self.state_dir = Path(state_dir)
        #: CentralSettings fields for the embedded central (max_auto_resubmits, node_bad_after, ...).
        self.central_settings = dict(central or {})
        # Users' own files (gridpilot submit's sandbox) go to this grid's storage element, as its jobs' outputs do.
        self.central_settings.setdefault("default_se", SE_NAME)
        self.site = site
        self.ce = ce
        self.pilot_overrides = pilot
        self.stack = ExitStack()
        self.runner: Optional[subprocess.Popen] = None
        self.factory: Optional[Factory] = None
        #: The CE's last cycle, as its thread reports it (the live progress shows its pilot counts).
        self.ce_report: Optional[CycleReport] = None
        #: The pilots stop_ce had to remove: still running when their time to end on their own was up.
        self.pilots_removed: List[str] = []
        self._ce_stop = threading.Event()
        self._ce_thread: Optional[threading.Thread] = None

    def __enter__(self) -> LocalGrid:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.central = self.stack.enter_context(EmbeddedCentral(self.state_dir / "central", **self.central_settings))
        self.admin = self.central.client()
        se_dir = self.state_dir / "se"
        se_dir.mkdir(exist_ok=True)
        self.se = LocalStorageElement(SE_NAME, f"file://{se_dir}")
        self.admin.add_storage_element(SE_NAME, f"file://{se_dir}")
        self.user_token = self.admin.mint_token("user", os.environ.get("USER") or "demo")
        self.user = CentralClient(self.central.url, self.user_token)
        agent_token = self.admin.mint_token("agent", f"pilot@{os.uname().nodename}", site=self.site, ce=self.ce)
        self.token_file = self.state_dir / "agent.token"
        write_private(self.token_file, agent_token)
        return self

    def __exit__(self, *exc: object) -> None:
        # Leaving on an error (or Ctrl-C): the pilots are removed at once rather than given time to finish.
        self.stop_ce(wait_s=30.0 if exc[0] is None else 0.0)
        self.stop_runner()
        self.stack.close()

    def register_local_file(self, path: Path, lfn: str) -> None:
        """Copy a local file onto the storage element (verified) and register it in the catalogue."""
        pfn = new_pfn(self.se)
        digest = self.se.put(path, pfn)
        self.admin.register_file(lfn=lfn, size=digest.size, adler32=digest.adler32, md5=digest.md5, se=SE_NAME, pfn=pfn)

    def pilot_config(self, **overrides: Any) -> PilotConfig:
        # Site and CE are the agent token's: the runner asks central for them at start-up.
        values: Dict[str, Any] = dict(
            central_url=self.central.url,
            token_file=str(self.token_file),
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

    # -- a computing element on this machine ----------------------------------------------------------------------
    def pilot_environment(self, **settings: Any) -> Dict[str, str]:
        """The runner settings the CE gives its pilots (config.py's GRIDPILOT_* layer), as pilot_config gives
        start_runner's: this grid's storage element is close, empty matches are retried quickly, and a pilot
        leaves after three of them with nothing running, so pilots end soon after the last job. `settings`:
        more fields, by PilotConfig name."""
        values: Dict[str, Any] = dict(
            close_se=SE_NAME, heartbeat_interval=5.0, match_backoff=0.5, match_backoff_max=1.0,
            max_empty_matches=3, drain_grace=10.0,
        )
        values.update(settings)
        return {f"GRIDPILOT_{k.upper()}": str(v) for k, v in values.items()}

    def ce_settings(self, **overrides: Any) -> CESettings:
        """A local-backend CE of this grid's site and CE that cycles every second, its pilots running this
        interpreter's gridpilot. `overrides`: CESettings fields (environment adds to pilot_environment())."""
        env = self.pilot_environment()
        env.update(overrides.pop("environment", {}))
        values: Dict[str, Any] = dict(
            central_url=self.central.url, token_file=str(self.state_dir / "ce.token"), site=self.site, ce=self.ce,
            backend="local", cycle_interval=1.0, max_queued=4, max_running=4, per_cycle=4,
            # A local pilot is running within a second; one that has not matched 5 s later has lost its job to
            # another pilot, so the CE need not wait longer before it counts the job as still wanting one.
            startup_grace=5.0,
            # Wall time for a job of the default TTL (one that names none) and the slot's margin.
            cores=1, memory_mb=PILOT_MEMORY_PER_CORE_MB, wall_time=DEFAULT_TTL + SLOT_TTL_MARGIN_S,
            install_path=pilot_install_path(self.state_dir), pilot_dir=str(self.state_dir / "pilots"),
            environment=env,
        )
        values.update(overrides)
        return CESettings(**values)

    def start_ce(self, **overrides: Any) -> Factory:
        """Mint a CE token for this grid's site and CE, build the CE as `gridpilot ce` does (the token's binding
        checked against central) and cycle it in a thread until stop_ce. `overrides`: as ce_settings."""
        token_file = self.state_dir / "ce.token"
        if not token_file.exists():
            write_private(token_file, self.admin.mint_token("ce", f"ce@{os.uname().nodename}", site=self.site,
                                                            ce=self.ce))
        factory = build_factory(self.ce_settings(**overrides))
        self.factory = factory
        self._ce_stop.clear()

        def seen(r: CycleReport) -> None:
            self.ce_report = r

        self._ce_thread = threading.Thread(target=factory.run, args=(self._ce_stop,), kwargs={"on_cycle": seen},
                                           name="gridpilot-ce", daemon=True)
        self._ce_thread.start()
        return factory

    def stop_ce(self, wait_s: float = 30.0) -> Dict[str, str]:
        """Stop the CE's cycles (it submits nothing more), give its pilots `wait_s` to end on their own (one with
        nothing to match leaves after max_empty_matches), then remove the rest through the backend (SIGTERM, then
        their process trees killed). The pilots' final states, {batch id: state}."""
        if self.factory is None:
            return {}
        self._ce_stop.set()
        if self._ce_thread is not None:
            self._ce_thread.join()
            self._ce_thread = None
        # From here on only this thread touches the factory and its backend (the backend is not thread-safe).
        backend = self.factory.backend
        deadline = time.monotonic() + wait_s
        while True:
            busy = sorted(b for b, st in backend.states().items() if st not in FINAL_STATES)
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        self.pilots_removed = busy
        self.factory.close()
        states = backend.states()
        self.factory = None
        return states

    def wait(self, ids: Sequence[int], timeout: float, on_tick: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [self.user.get_job(i) for i in ids]
            if on_tick is not None:
                on_tick(jobs)
            if all(JobStatus[j["state"]].is_final for j in jobs) or time.monotonic() > deadline:
                return jobs
            time.sleep(0.5)
