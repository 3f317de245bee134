"""What the JobRunner makes sure of before its first match, each failure ending it with its own exit code
(gridpilot/exitcodes.py), so that a pilot that cannot work never looks like one that found no work:

- a close storage element is configured (CONFIG): without one every job's outputs fail (ERROR_SV);
- the work directory can be made and written (NODE_UNUSABLE);
- central answers within the start-up window (CENTRAL_UNREACHABLE), tried with capped, jittered backoff; over https
  its certificate verifies against ca_file (CONFIG at once otherwise);
- central takes the token as an agent's (TOKEN_REFUSED: expired, revoked, another role);
- the site and CE are the token's (a configured one that disagrees: CONFIG), since central refuses a match for
  any other;
- central knows every close storage element (CONFIG).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from gridpilot import exitcodes
from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig
from gridpilot.errors import CentralError, CentralUnreachable, CentralUntrusted, GridpilotError
from gridpilot.reachability import Backoff, Reachability

#: HTTP statuses with which central refuses the caller's token (unknown, expired, revoked, or not allowed).
TOKEN_STATUSES = (401, 403)
HOW_TO_SET_CLOSE_SE = "set close_se in the configuration, GRIDPILOT_CLOSE_SE, or --close-se"


class StartupFailure(GridpilotError):
    """The runner cannot start: the exit code (exitcodes) and one line saying why and what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_close_se(cfg: PilotConfig) -> None:
    if not cfg.close_se:
        raise StartupFailure(exitcodes.CONFIG, "no close storage element: every job's outputs would fail (ERROR_SV); "
                                               f"{HOW_TO_SET_CLOSE_SE} (a name central knows, see GET /api/v1/storage)")


def check_workdir(cfg: PilotConfig) -> None:
    """The root of the jobs' work directories exists (made if need be) and this user may create files in it."""
    root = Path(cfg.workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gridpilot-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StartupFailure(exitcodes.NODE_UNUSABLE,
                             f"work directory {root} is not usable: {e.strerror or e} (workdir, GRIDPILOT_WORKDIR, "
                             "--workdir)") from None


class CentralAtStartup:
    """Central as the runner reaches it at start-up: each call is tried until central answers, within one window
    (`cfg.startup_window`, from the first try) for all of them, with capped, jittered backoff between tries and one
    log line per change (Reachability)."""

    def __init__(self, cfg: PilotConfig, say: Callable[[str], None], stopped: Callable[[], bool], *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.client = CentralClient(cfg.central_url or "", cfg.agent_token(), timeout=10.0, retries=0,
                                    ca_file=cfg.ca_file)
        self.stopped = stopped
        self.clock = clock
        self.sleep = sleep
        self.reach = Reachability(self.client.url, say, clock=clock,
                                  doing=f"trying for up to {cfg.startup_window:.0f} s (startup_window)")
        self.backoff = Backoff(cfg.match_backoff, cfg.match_backoff_max)
        self.end = clock() + cfg.startup_window

    def close(self) -> None:
        self.client.close()

    def ask(self, what: str, call: Callable[[CentralClient], Any]) -> Any:
        """`call`'s answer; None when `stopped()` (SIGTERM) came first. A refused token is StartupFailure
        TOKEN_REFUSED at once (retrying cannot change central's mind), another 4xx is CONFIG, and no answer within
        the window is CENTRAL_UNREACHABLE."""
        url = self.client.url
        while not self.stopped():
            try:
                answer = call(self.client)
            except CentralUntrusted as e:
                # Not an outage: the CA bundle (ca_file, or the system's without one) does not fit central's
                # certificate, and waiting will not change that.
                raise StartupFailure(exitcodes.CONFIG, f"{e} (ca_file, GRIDPILOT_CA_FILE, --ca-file)") from None
            except CentralUnreachable as e:
                self.reach.failed(e.reason)
            except CentralError as e:
                if e.status in TOKEN_STATUSES:
                    raise StartupFailure(exitcodes.TOKEN_REFUSED, f"central {url} refuses the agent token "
                                                                  f"({e.status} {e.code}): {e.message}") from None
                if e.status < 500:
                    raise StartupFailure(exitcodes.CONFIG, f"central {url} answered {e.status} {e.code} to {what}: "
                                                           f"{e.message} (is central_url gridpilot's central?)") from None
                self.reach.failed(f"{what}: {e.status} {e.code}: {e.message}")
            else:
                self.reach.answered()
                return answer
            left = self.end - self.clock()
            if left <= 0:
                raise StartupFailure(exitcodes.CENTRAL_UNREACHABLE,
                                     f"central {url} did not answer within the start-up window of "
                                     f"{self.cfg.startup_window:.0f} s (startup_window); if central is elsewhere, "
                                     "set central_url, GRIDPILOT_CENTRAL_URL or --central-url")
            # In short steps: SIGTERM from the batch system ends the wait at once.
            until = self.clock() + min(self.backoff.next(), left)
            while not self.stopped() and self.clock() < until:
                self.sleep(min(0.2, max(0.0, until - self.clock())))
        return None


def bind_to_token(cfg: PilotConfig, claims: Dict[str, Any]) -> PilotConfig:
    """`cfg` with the site and CE of the agent token; a role other than agent is TOKEN_REFUSED, a configured site
    or CE other than the token's is CONFIG."""
    role = claims.get("role")
    if role != "agent":
        raise StartupFailure(exitcodes.TOKEN_REFUSED,
                             f"the token's role is {role!r} (subject {claims.get('subject')!r}), not 'agent': the runner "
                             "needs an agent token bound to a site and CE (gridpilot central token --role agent "
                             "--site SITE --ce CE)")
    bound: Dict[str, str] = {}
    for name in ("site", "ce"):
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise StartupFailure(exitcodes.TOKEN_REFUSED, f"the agent token is bound to no {name}")
        configured = getattr(cfg, name)
        if configured is not None and configured != value:
            raise StartupFailure(exitcodes.CONFIG,
                                 f"{name} is set to {configured!r} but the agent token is bound to {name} {value!r}: "
                                 f"leave {name} unset (the token decides) or use a token minted for {configured!r}")
        bound[name] = value
    return dataclasses.replace(cfg, site=bound["site"], ce=bound["ce"])


def check_close_se_known(cfg: PilotConfig, known: List[str]) -> None:
    """Every close storage element is one central knows (`known`, from GET /api/v1/storage): CONFIG otherwise."""
    unknown = [name for name in cfg.close_se if name not in known]
    if unknown:
        raise StartupFailure(exitcodes.CONFIG,
                             f"close storage element {', '.join(repr(n) for n in unknown)} is not one central "
                             f"knows ({', '.join(known) or 'none configured'}); {HOW_TO_SET_CLOSE_SE}")


def prepare(cfg: PilotConfig, say: Callable[[str], None], stopped: Callable[[], bool]) -> Optional[PilotConfig]:
    """Every check above, in order; the configuration to run with (site and CE from the token), or None when
    `stopped()` came first. Raises StartupFailure."""
    check_close_se(cfg)
    check_workdir(cfg)
    central = CentralAtStartup(cfg, say, stopped)
    try:
        claims = central.ask("GET /api/v1/whoami", lambda c: c.whoami())
        if claims is None:
            return None
        cfg = bind_to_token(cfg, claims if isinstance(claims, dict) else {})
        elements = central.ask("GET /api/v1/storage", lambda c: c.storage_elements())
        if elements is None:
            return None
    finally:
        central.close()
    check_close_se_known(cfg, [str(e.get("name")) for e in elements])
    return cfg
