"""`central serve --workers N`: N uvicorn worker processes accepting on the one socket the parent bound.

uvicorn's own supervisor (uvicorn.supervisors.Multiprocess) starts the workers with multiprocessing's *spawn*
method, so a worker is a fresh interpreter: it inherits the listening socket and nothing else (no SQLAlchemy engine,
no thread, no lock of the parent). It pings each worker every half second and replaces one that died (SIGKILL, OOM)
or stopped answering; SIGTERM or SIGINT to the parent stops them all gracefully.

What runs where:
- the parent: the schema upgrade (once, before any worker starts; workers only check the version), the URL file,
  the supervisor. It keeps no database connection open while it supervises.
- each worker: its own Database and Central, opened after it started; the API.
- one worker at a time: the sweeper. Each worker tries a lock (flock) on `sweeper.lock` in the state directory;
  the one holding it sweeps, the others try again every sweep interval, so when the holder dies (the kernel drops
  its lock) another takes over within one interval. A sweep is safe beside another (sweeper.py), so the lock keeps
  the work and the SQLite write lock from being taken N times over, not the data correct.
- metrics: prometheus_client's multiprocess mode. Each worker's counters and histograms live in files under a
  private directory in the state directory (`metrics-<parent pid>`), and /metrics, whichever worker answers, sums
  every worker's, those of workers that died included (counters never go back). The process_* series (CPU, memory
  of one process) are left out in this mode: they would be one random worker's.

Every answer carries `X-Gridpilot-Worker: <pid>` (in a one-process server too): which process served it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import inspect
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, MutableMapping, Optional

from gridpilot.central.settings import CentralSettings
from gridpilot.private_files import make_private_dir

log = logging.getLogger("gridpilot.central")

#: --workers: at least one; a bound so that a typo cannot start thousands of processes (each holds a database pool).
MIN_WORKERS = 1
MAX_WORKERS = 64
#: The lock file whose holder runs the sweeper, in the state directory.
SWEEPER_LOCK_FILE = "sweeper.lock"
#: The header naming the process that answered.
WORKER_HEADER = "x-gridpilot-worker"
#: Seconds the supervisor waits for a worker's answer to its ping before it kills the worker as hung. uvicorn's
#: default (5 s) killed healthy workers on a machine at load 20, where a process may wait seconds for a CPU.
HEALTHCHECK_TIMEOUT_S = 30
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: central's log lines (console.cmd_central_serve configures the parent's the same way).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


def check_workers(n: object) -> int:
    """`n` as a worker count; ValueError naming --workers and its bounds otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_WORKERS <= n <= MAX_WORKERS:
        raise ValueError(f"--workers must be a whole number from {MIN_WORKERS} to {MAX_WORKERS}, got {n!r}")
    return n


def with_worker_header(app: ASGIApp) -> ASGIApp:
    """`app` whose HTTP answers carry X-Gridpilot-Worker: this process's pid."""
    value = str(os.getpid()).encode()

    async def wrapped(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (WORKER_HEADER.encode(), value)]
            await send(message)

        await app(scope, receive, send_with_header)

    return wrapped


# -- the metrics directory --


def metrics_dir(state_dir: Path) -> Path:
    """A fresh private directory for this server's multiprocess metrics; those left by servers no longer running
    (a parent killed with SIGKILL leaves its own) are removed first."""
    for old in state_dir.glob("metrics-*"):
        pid = old.name.split("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = state_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)  # a pid reused: counters of another life must not be added in
    return make_private_dir(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to clean after
        return True
    return True


# -- in the worker --


class SweeperLease:
    """Runs the Central's sweeper in this process while it holds the flock on `path`; tries to take it every
    `retry_s` seconds until it does (the kernel drops a dead holder's lock)."""

    def __init__(self, central: Any, path: Path, retry_s: float) -> None:
        self.central = central
        self.path = path
        self.retry_s = retry_s
        self._fd: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gridpilot-sweeper-lease", daemon=True)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        self._thread.start()

    def _try(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._try():
                    log.info("sweeper: this worker (pid %d) sweeps, every %.0f s", os.getpid(), self.retry_s)
                    self.central.start_sweeper()
                    return
            except OSError as e:  # the state directory went away or filled up: said, and tried again
                log.warning("sweeper: cannot lock %s: %s", self.path, e)
            self._stop.wait(self.retry_s)

    def stop(self) -> None:
        """Stop trying; if this process sweeps, stop its sweeper, then let the lock go (in that order: no moment
        with two sweepers)."""
        self._stop.set()
        self._thread.join(10)
        if self._fd is not None:
            if self.central.sweeper is not None:
                self.central.sweeper.stop()
                self.central.sweeper = None
            os.close(self._fd)
            self._fd = None


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker when the supervisor dies, even of SIGKILL: an orphaned worker would go on accepting on
    the port, and a restarted server could not bind it. Linux only (prctl); elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before prctl: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def worker_app(settings: CentralSettings, parent_pid: int, log_level: int) -> ASGIApp:
    """The app of one worker (uvicorn calls this in the worker, after spawn): its own Database and Central on the
    schema the parent upgraded, the sweeper behind the lease, the worker header. `log_level`: the parent's, for
    central's own loggers (a spawned interpreter starts with none configured)."""
    from gridpilot.central.app import create_app
    from gridpilot.central.serve import open_central

    _die_with_parent(parent_pid)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    central = open_central(settings, upgrade=False)
    app = create_app(central, run_sweeper=False)
    lease = SweeperLease(central, settings.state_dir / SWEEPER_LOCK_FILE, settings.sweep_interval_s)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[None]:
        async with inner(a):
            if settings.sweep_interval_s > 0:
                lease.start()
            try:
                yield
            finally:
                lease.stop()

    app.router.lifespan_context = lifespan
    return with_worker_header(app)


# -- in the parent --


def run_supervisor(config_kwargs: Dict[str, Any], settings: CentralSettings, sock: Any, workers: int) -> int:
    """Serve with `workers` processes on `sock` until SIGTERM/SIGINT; 0 then. RuntimeError when a worker could not
    start (uvicorn stops the whole server then: the next one would fail the same way)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    directory = metrics_dir(settings.state_dir)
    previous = os.environ.get(_MULTIPROC_ENV)
    # Read by prometheus_client when it is imported, which in a spawned worker is after this.
    os.environ[_MULTIPROC_ENV] = str(directory)
    try:
        factory = functools.partial(worker_app, settings, os.getpid(), logging.getLogger().getEffectiveLevel())
        config = uvicorn.Config(factory, factory=True, workers=workers,
                                timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S, **config_kwargs)
        if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn before 0.51 took the worker's target
            supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])  # type: ignore
        else:
            supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
        failed: List[Any] = [p for p in supervisor.processes if p.process.exitcode == STARTUP_FAILURE]
    finally:
        if previous is None:
            os.environ.pop(_MULTIPROC_ENV, None)
        else:
            os.environ[_MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
    if failed:
        raise RuntimeError(f"a worker process (pid {failed[0].pid}) failed to start; its error is in the log above")
    return 0


__all__ = ["MAX_WORKERS", "MIN_WORKERS", "SWEEPER_LOCK_FILE", "WORKER_HEADER", "SweeperLease", "check_workers",
           "metrics_dir", "run_supervisor", "with_worker_header", "worker_app"]
