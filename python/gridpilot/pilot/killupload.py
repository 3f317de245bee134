"""What the JobWrapper uploads after the JobAgent killed its payload for a broken limit (its TTL, memory, disk...),
and when it stops: ALICE's "strict TTL enforcement: the payload is killed at once, an hour's grace for the upload".

The outputs the JDL names (Output, OutputFile, OutputArchive) that exist, then the logs (OutputErrorE: by default
log_archive.zip of stdout and stderr), one at a time and in that order; a name given twice goes once. An upload is
started only while the grace lasts; the agent kills the wrapper at its end, so one under way then is cut. What is not
uploaded is said with why: missing, the grace was over, the upload failed, nothing to put in it (an archive none of
whose patterns matched a non-empty file, an empty file).

Pure: the upload, the clock and the report to the agent are passed in (pilot/staging.py does the I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Set, Tuple

from gridpilot.storage.transfers import OutputSpec

#: Why an output was not uploaded (why an upload failed is traced where it failed).
MISSING = "missing"
FAILED = "failed"
GRACE_OVER = "upload grace over"
NOTHING = "nothing to upload"
KILLED = "killed by central meanwhile"

#: One step of the plan: an output, and why it will not be uploaded (None: it will be tried).
Step = Tuple[OutputSpec, Optional[str]]


@dataclass(frozen=True)
class Outcome:
    """What became of one output after the kill."""

    name: str
    uploaded: bool
    why_not: str = ""


def plan(outputs: Sequence[OutputSpec], logs: Sequence[OutputSpec], exists: Callable[[str], bool]) -> List[Step]:
    """The outputs, then the logs, each once (the first entry of a name wins), with MISSING for a plain file that is
    not in the work directory. An archive is always tried: whether its patterns match is known only when it is built."""
    seen: Set[str] = set()
    steps: List[Step] = []
    for spec in (*outputs, *logs):
        if spec.name in seen:
            continue
        seen.add(spec.name)
        steps.append((spec, None if spec.is_archive or exists(spec.name) else MISSING))
    return steps


def run(steps: Sequence[Step], deadline: float, clock: Callable[[], float],
        upload: Callable[[OutputSpec], Optional[str]],
        announce: Callable[[List[str], Optional[str]], None] = lambda pending, current: None,
        stop: Callable[[], Optional[str]] = lambda: None) -> List[Outcome]:
    """Upload the steps in order, none started once `clock()` has reached `deadline` or `stop()` gives a reason.
    `upload(spec)`: None when it was uploaded, else why not. `announce(pending, current)`: before each upload, the
    names not uploaded yet (the current one first) and the current one; at the end, ([], None)."""
    left = [spec.name for spec, why in steps if why is None]
    outcomes: List[Outcome] = []
    for spec, why in steps:
        if why is not None:
            outcomes.append(Outcome(spec.name, False, why))
            continue
        stopped = stop() or (GRACE_OVER if clock() >= deadline else None)
        if stopped is not None:
            outcomes.append(Outcome(spec.name, False, stopped))
            left.remove(spec.name)
            continue
        announce(list(left), spec.name)
        problem = upload(spec)
        left.remove(spec.name)
        outcomes.append(Outcome(spec.name, problem is None, problem or ""))
    announce([], None)
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    """One trace line: what was uploaded after the kill and what was not, with why."""
    done = [o.name for o in outcomes if o.uploaded]
    lost = [f"{o.name} ({o.why_not})" for o in outcomes if not o.uploaded]
    return (f"After the kill: uploaded: {', '.join(done) or 'nothing'}; "
            f"not uploaded: {', '.join(lost) or 'nothing'}")


def lost_at_kill(pending: Sequence[str], current: Optional[str]) -> str:
    """The agent's line when it kills the wrapper at the end of the grace: what the wrapper had not uploaded yet."""
    if not pending:
        return "nothing was left to upload"
    names = [f"{n} (its upload was under way)" if n == current else f"{n} (not started)" for n in pending]
    return "not uploaded: " + ", ".join(names)
