"""`gridpilot ce`: check the configuration against central and the batch system, say what will happen, then cycle.

Exit status: 0 after a clean stop (SIGTERM, SIGINT) or a `--once` cycle without errors; 1 when that one cycle had
errors; 2 when the configuration, the token or the batch system is unusable (the message says which and where).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TextIO, Tuple

from gridpilot.ce import make_backend
from gridpilot.ce.factory import CycleReport, Factory
from gridpilot.ce.settings import CESettings
from gridpilot.client import CentralClient
from gridpilot.errors import BatchError, CentralError, CentralUntrusted, ConfigError


def _binding(s: CESettings, client: CentralClient) -> Tuple[str, str]:
    try:
        me = client.whoami()
    except CentralError as e:
        raise ConfigError(f"central at {s.central_url} refused the CE token from {s.token_file}: {e}") from e
    except CentralUntrusted as e:
        raise ConfigError(str(e)) from e
    if me.get("role") != "ce":
        raise ConfigError(f"the token in {s.token_file} has role {me.get('role')!r}; `gridpilot ce` needs a ce token "
                          "(gridpilot central token --role ce --subject NAME --site SITE --ce CE -o FILE)")
    for name in ("site", "ce"):
        given = getattr(s, name)
        if given is not None and given != me.get(name):
            raise ConfigError(f"field '{name}' is {given!r} but the CE token is bound to {name} {me.get(name)!r}")
    return me["site"], me["ce"]


def build_factory(s: CESettings) -> Factory:
    """A factory for these settings, or ConfigError / BatchError saying what is wrong."""
    client = CentralClient(s.central_url, s.token(), timeout=30, retries=2, ca_file=s.ca_file)
    site, ce = _binding(s, client)
    return Factory(s, client, make_backend(s, ce), site=site, ce=ce)


def describe(f: Factory) -> str:
    s = f.s
    runner = os.path.join(s.install_path, "bin", "gridpilot")
    lines = [
        f"gridpilot ce: site {f.site}, CE {f.ce}, central {s.central_url}",
        f"  backend {f.backend.name}; every {s.cycle_interval:g} s; at most {s.max_queued} queued, {s.max_running} in "
        f"the batch system, {s.per_cycle} new per cycle; queued or held {s.max_queue_time:g} s after submission: "
        "removed",
        "  pilot shapes: " + ", ".join(sh.label() for sh in f.shapes),
        f"  pilots run {runner}" + ("" if os.access(runner, os.X_OK) else " (not found on this machine: it must "
                                                                          "exist on the worker nodes)"),
        f"  pilot directories in {s.pilot_dir}" + (f", run as {s.pilot_user}" if s.pilot_user else ""),
    ]
    return "\n".join(lines)


def run_ce(s: CESettings, *, once: bool = False, out: TextIO = sys.stdout) -> int:
    try:
        f = build_factory(s)
    except (ConfigError, BatchError) as e:
        sys.stderr.write(f"gridpilot ce: {e}\n")
        return 2
    print(describe(f), file=out, flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    def show(r: CycleReport) -> None:
        print(time.strftime("%H:%M:%S ", time.localtime(r.started)) + r.summary(), file=out, flush=True)
        for e in r.errors:
            sys.stderr.write(f"gridpilot ce: {e}\n")

    bad = f.run(stop, once=once, on_cycle=show)
    if not once:
        # Stopped: local pilots end with the CE (slurm and htcondor ones are the batch system's). After --once
        # they are left running on their own, in their own sessions.
        f.close()
    return 1 if (once and bad) else 0


__all__ = ["build_factory", "describe", "run_ce"]
