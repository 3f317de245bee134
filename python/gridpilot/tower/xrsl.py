"""The ARC job description (xRSL) of one job the tower submits: the offline runner as executable, the job's
files as inputs, the whole session kept as output.

- executable `<install_path>/bin/gridpilot`, arguments `offline .`: the node runs the job with no network
  (pilot/offline.py) in the session directory, which holds job.json and the inputs;
- inputfiles: job.json and the inputs the tower uploads are listed with an empty source (A-REX waits for them to be
  PUT into the session before the job starts); an input ARC stages itself is listed with its URL;
- outputfiles `("/" "")`: A-REX keeps the whole session once the job ends, for the tower to download result.json,
  the outputs and the pilot log from (a file not listed would be removed at the end of the job);
- count, memory (MB per core), walltime (minutes, rounded up) from the JDL; the site's queue when one is set.

Every value goes in double quotes with a quote in it doubled (RSL's own escape); a control character (a newline
would end an attribute in some parsers) is refused with a ValueError naming the attribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

#: The files the offline runner reads and writes in the session (the interface of pilot/offline.py).
JOB_JSON = "job.json"
RESULT_JSON = "result.json"
PILOT_LOG = "gridpilot-offline.log"
#: Central's kill, for the offline runner: its existence in the session ends the job as a central kill (docs/offline.md).
KILL_REQUEST = "kill.request"
#: The runner's stdout and stderr, joined: what the node printed before the log could be opened.
STDOUT = "gridpilot-offline.out"
#: Added to the JDL's TTL for ARC's wall-time limit: the runner's staging checks and its own kill grace.
WALLTIME_MARGIN_S = 600


@dataclass(frozen=True)
class ArcJob:
    """What the xRSL says: `inputs` are (name in the session, source URL or "" for an upload)."""

    install_path: str
    job_name: str
    inputs: Tuple[Tuple[str, str], ...]
    cores: int = 1
    memory_mb: int = 2000
    wall_s: int = 3600
    queue: str = ""


def quote(value: str, attribute: str) -> str:
    """`value` as an RSL literal."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"xRSL attribute {attribute}: control character {bad!r} in {value!r}")
    return '"' + value.replace('"', '""') + '"'


def check_session_name(name: str) -> str:
    """A file name in the session directory: relative, no `..`, no empty part; ValueError otherwise."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative path in the session: {name!r}")
    return name


def build(job: ArcJob) -> str:
    """The xRSL text of `job`."""
    if job.cores < 1 or job.memory_mb < 1 or job.wall_s < 1:
        raise ValueError(f"cores, memory and wall time must be positive: {job}")
    names = [JOB_JSON] + [check_session_name(n) for n, _ in job.inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"a session file is listed twice: {names}")
    files: List[str] = [f"({quote(JOB_JSON, 'inputfiles')} \"\")"]
    files += [f"({quote(n, 'inputfiles')} {quote(src, 'inputfiles')})" for n, src in job.inputs]
    executable = job.install_path.rstrip("/") + "/bin/gridpilot"
    lines = [
        f"&(executable={quote(executable, 'executable')})",
        ' (arguments="offline" ".")',
        f" (jobname={quote(job.job_name, 'jobname')})",
        f" (inputfiles={' '.join(files)})",
        ' (outputfiles=("/" ""))',
        f" (stdout={quote(STDOUT, 'stdout')})",
        ' (join="yes")',
        f" (count={int(job.cores)})",
        f" (memory={int(math.ceil(job.memory_mb / job.cores))})",
        f" (walltime={int(math.ceil((job.wall_s + WALLTIME_MARGIN_S) / 60))})",
    ]
    if job.queue:
        lines.append(f" (queue={quote(job.queue, 'queue')})")
    return "\n".join(lines)


def session_inputs(uploaded: Sequence[str], staged: Sequence[Tuple[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """The inputs as ArcJob lists them: uploaded ones by name, ARC-staged ones with their URLs."""
    return tuple([(n, "") for n in uploaded] + list(staged))


__all__ = ["ArcJob", "JOB_JSON", "KILL_REQUEST", "PILOT_LOG", "RESULT_JSON", "STDOUT", "WALLTIME_MARGIN_S", "build",
           "check_session_name", "quote", "session_inputs"]
