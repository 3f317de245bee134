"""The JobRunner's exit codes (`gridpilot runner`, and so a pilot's batch job), and the reason each stands for.

A batch system and a CE see only the exit code: a broken pilot must never look like one that ran its jobs.
JAliEn's pilot distinguishes the same cases (ran or found nothing, central unreachable, token refused, node
unusable, killed); the numbers are gridpilot's own and documented in docs/operators.md. Codes above 128 are the
shell's "killed by signal N" (137: SIGKILL, usually the batch system's hard limit).
"""

from __future__ import annotations

import signal
from typing import Dict

#: Ran jobs, or found none to run, and ended as planned (slot time up, no work, drained).
OK = 0
#: An unexpected error (a bug): the runner's log holds the traceback.
CRASHED = 1
#: The configuration is unusable (the message names the file, line or flag and the field), or no close SE is set.
CONFIG = 2
#: The pilot's start-up script found no gridpilot installation at the CE's install_path.
NO_INSTALL = 3
#: Central could not be reached during the whole start-up window.
CENTRAL_UNREACHABLE = 10
#: Central refused the agent token (expired, revoked, wrong role, or bound to another site or CE).
TOKEN_REFUSED = 11
#: The node cannot run jobs (no container where one is required, unwritable work directory, jobs failing at once).
NODE_UNUSABLE = 12
#: SIGTERM (or SIGINT) from the batch system or an operator before the slot's end: jobs wound down, then exited.
STOPPED = 13

REASONS: Dict[int, str] = {
    OK: "ok",
    CRASHED: "crashed",
    CONFIG: "config",
    NO_INSTALL: "no_install",
    CENTRAL_UNREACHABLE: "central_unreachable",
    TOKEN_REFUSED: "token_refused",
    NODE_UNUSABLE: "node_unusable",
    STOPPED: "stopped",
}


def reason(code: int) -> str:
    """The label of an exit code, for logs and metrics: a known reason, `signal_<NAME>` for 128+N (or a negative
    code, as subprocess gives for a child killed by a signal), else `exit_<code>`."""
    if code in REASONS:
        return REASONS[code]
    signum = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    if signum:
        try:
            return f"signal_{signal.Signals(signum).name}"
        except ValueError:
            return f"signal_{signum}"
    return f"exit_{code}"


__all__ = ["CENTRAL_UNREACHABLE", "CONFIG", "CRASHED", "NODE_UNUSABLE", "NO_INSTALL", "OK", "REASONS", "STOPPED",
           "TOKEN_REFUSED", "reason"]
