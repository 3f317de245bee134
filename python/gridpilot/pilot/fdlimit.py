"""The pilot's descriptor limit: the soft RLIMIT_NOFILE raised to the hard one when a pilot process starts.

The native sampler keeps descriptors open between samples (stat, io and the children files of every thread) within
a budget taken from the soft limit (rust/src/core/fdbudget.rs), and reads the rest by open-read-close: a soft limit
of 1024 makes a job of 1000 processes cost an open() per file per sample. The runner, the agents and the wrappers
call raise_nofile() first thing. The payload gets the soft limit the pilot started with back (payload_limit()), as
systemd does for its services' children: programs that close every descriptor up to the soft limit before exec,
or use select(), expect the usual 1024, not the hard limit.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Optional, Tuple

log = logging.getLogger(__name__)

#: Where the soft limit the first pilot process found is kept for its descendants (GRIDPILOT_* reaches containers).
ORIGINAL_ENV = "GRIDPILOT_NOFILE_SOFT"
#: A hard limit below this is logged: the sampler of a job of a few thousand processes then opens files per sample.
LOW_HARD_LIMIT = 4096
_warned = False


def _nr_open() -> int:
    """The kernel's ceiling on any process's limit (fs.nr_open): an unlimited hard limit means this."""
    try:
        with open("/proc/sys/fs/nr_open", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile() -> Tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards. Logs once, at WARNING, when
    the hard limit is low or the raise was refused; never fails."""
    global _warned
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.environ.setdefault(ORIGINAL_ENV, str(soft))
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    problem: Optional[str] = None
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            problem = f"cannot raise the soft RLIMIT_NOFILE from {soft} to {target}: {e}"
    if problem is None and target < LOW_HARD_LIMIT:
        problem = f"the hard RLIMIT_NOFILE is {target}"
    if problem and not _warned:
        _warned = True
        log.warning("%s: the job monitor keeps fewer files open and re-opens the rest at every sample "
                    "(more CPU for jobs of many processes, none missed)", problem)
    return soft, hard


def payload_limit() -> None:
    """Give the calling process the soft limit the pilot started with (a preexec_fn for the payload)."""
    want = os.environ.get(ORIGINAL_ENV, "")
    if not want.isdigit():
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = int(want)
    if n < soft and (hard == resource.RLIM_INFINITY or n <= hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
