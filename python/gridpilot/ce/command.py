"""`gridpilot ce`: check the configuration against central and the batch system, say what will happen, then cycle.

Exit status:
  0   a clean stop (SIGTERM, SIGINT), or a `--once` cycle without errors;
  1   the `--once` cycle had errors (the lines on stderr say which);
  2   the configuration, the token or the batch system is unusable (the message says which and where), or the
      metrics port cannot be served;
  10  `--once` only: central did not answer (exitcodes.CENTRAL_UNREACHABLE, as for the runner). Without --once the
      CE never exits for that: it waits for central at start and rides out outages (reach.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, List, Optional, TextIO, Tuple

from gridpilot import exitcodes
from gridpilot.ce import make_backend
from gridpilot.ce.factory import CycleReport, Factory
from gridpilot.ce.reach import CentralReach, unavailable
from gridpilot.ce.settings import CESettings
from gridpilot.ce.stats import CEStats
from gridpilot.client import CentralClient
from gridpilot.errors import BatchError, CentralError, CentralUnreachable, CentralUntrusted, ConfigError

if TYPE_CHECKING:
    from gridpilot.ce.metrics import MetricsServer

OK = 0
CYCLE_ERRORS = 1
UNUSABLE = exitcodes.CONFIG
CENTRAL_UNREACHABLE = exitcodes.CENTRAL_UNREACHABLE


def _binding(s: CESettings, client: CentralClient) -> Tuple[str, str]:
    try:
        me = client.whoami()
    except CentralError as e:
        if unavailable(e):  # a proxy answering for a central that is not there
            raise CentralUnreachable(s.central_url, str(e)) from e
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


def new_reach(s: CESettings) -> CentralReach:
    return CentralReach(s.central_url, backoff_max=s.central_backoff_max, log_every=s.central_down_log_interval)


def build_factory(s: CESettings, *, reach: Optional[CentralReach] = None, stats: Optional[CEStats] = None) -> Factory:
    """A factory for these settings, or ConfigError / BatchError saying what is wrong, or CentralUnreachable."""
    client = CentralClient(s.central_url, s.token(), timeout=30, retries=2, ca_file=s.ca_file)
    reach = reach or new_reach(s)
    try:
        site, ce = _binding(s, client)
    except CentralUnreachable:
        client.close()
        raise
    reach.ok()
    return Factory(s, client, make_backend(s, ce), site=site, ce=ce, reach=reach, stats=stats)


def describe(f: Factory) -> str:
    s = f.settings
    lines = [
        f"gridpilot ce: site {f.site}, CE {f.ce}, central {s.central_url}",
        f"  backend {f.backend.name}; every {s.cycle_interval:g} s; at most {s.max_queued} queued, {s.max_running} in "
        f"the batch system, {s.per_cycle} new per cycle; queued or held {s.max_queue_time:g} s after submission: "
        "removed",
        "  pilot shapes: " + ", ".join(sh.label() for sh in f.shapes),
        *f.backend.describe(),
        *_describe_installations(f),
        f"  pilot directories in {s.pilot_dir}" + (f", run as {s.pilot_user}" if s.pilot_user else ""),
        f"  central unreachable: tried again with backoff up to {s.central_backoff_max:g} s, logged every "
        f"{s.central_down_log_interval:g} s while it stays down",
    ]
    return "\n".join(lines)


def _describe_installations(f: Factory) -> List[str]:
    s = f.settings
    if s.source_of_installations() == "install_path":
        runners = sorted({os.path.join(f.installations.resolve(sh.arch or None).path, "bin", "gridpilot")
                          for sh in f.shapes})
        return [f"  pilots run {runner}" + ("" if os.access(runner, os.X_OK) else " (not found on this machine: it "
                                                                              "must exist on the worker nodes)")
                for runner in runners]
    lines = [f"  pilot version {s.pilot_version or 'latest'} from {s.source_of_installations()} "
             f"{s.pilot_tree or ', '.join(sorted(s.install_paths))}"]
    lines += [f"    {sh.label()}: {f.installations.describe(sh.arch or None)}" for sh in f.shapes]
    return lines


def _start_metrics(s: CESettings, stats: CEStats, reach: CentralReach) -> MetricsServer:
    try:
        from gridpilot.ce import metrics
    except ImportError as e:
        raise ConfigError(f"metrics_port is set but prometheus_client cannot be imported ({e}): install the CE's "
                          "extra, pip install 'gridpilot[ce]', or leave metrics_port unset") from None
    try:
        return metrics.serve(stats, reach, s.metrics_address, int(s.metrics_port or 0))
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {s.metrics_address} port {s.metrics_port}: "
                          f"{e.strerror or e}") from None


def run_ce(s: CESettings, *, once: bool = False, out: TextIO = sys.stdout) -> int:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    stats = CEStats()
    reach = new_reach(s)
    server: Optional[MetricsServer] = None
    try:
        # Before central is asked anything: an admin sees central_reachable 0 while the CE waits for it.
        if s.metrics_port is not None:
            server = _start_metrics(s, stats, reach)
            print(f"gridpilot ce: metrics on {server.url}", file=out, flush=True)
        f = _start(s, once, stop, reach, stats)
    except (ConfigError, BatchError) as e:
        sys.stderr.write(f"gridpilot ce: {e}\n")
        _close(server)
        return UNUSABLE
    except CentralUnreachable as e:
        sys.stderr.write(f"gridpilot ce: {e}\n")
        _close(server)
        return CENTRAL_UNREACHABLE
    if f is None:  # stopped while waiting for central
        _close(server)
        return OK
    print(describe(f), file=out, flush=True)
    last: List[CycleReport] = []

    def show(r: CycleReport) -> None:
        last[:] = [r]
        print(time.strftime("%H:%M:%S ", time.localtime(r.started)) + r.summary(), file=out, flush=True)
        for e in r.errors:
            sys.stderr.write(f"gridpilot ce: {e}\n")

    try:
        bad = f.run(stop, once=once, on_cycle=show)
    finally:
        if not once:
            # Stopped: local pilots end with the CE (slurm and htcondor ones are the batch system's). After --once
            # they are left running on their own, in their own sessions.
            f.close()
        f.client.close()
        _close(server)
    if once and last and last[0].central_unreachable:
        sys.stderr.write(f"gridpilot ce: central at {s.central_url} unreachable: {last[0].central_unreachable}\n")
        return CENTRAL_UNREACHABLE
    return CYCLE_ERRORS if (once and bad) else OK


def _start(s: CESettings, once: bool, stop: threading.Event, reach: CentralReach, stats: CEStats) -> Optional[Factory]:
    """The factory, once central answers. --once: CentralUnreachable at once. Otherwise wait for central with the
    reach's backoff and log lines; None when stopped meanwhile."""
    while True:
        try:
            return build_factory(s, reach=reach, stats=stats)
        except CentralUnreachable as e:
            if once:
                raise
            if stop.wait(reach.failed(e)):
                return None


def _close(server: Optional[MetricsServer]) -> None:
    if server is not None:
        server.close()


__all__ = ["CENTRAL_UNREACHABLE", "CYCLE_ERRORS", "OK", "UNUSABLE", "build_factory", "describe", "run_ce"]
