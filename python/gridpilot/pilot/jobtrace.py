"""The sentences the JobAgent and the JobWrapper trace where JAliEn traces the same thing, in JAliEn's words and
units, so that an ALICE operator reads a gridpilot trace as one of theirs (docs/traces.md). What gridpilot adds
beside them stays in lines of its own.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional

from gridpilot import __version__

#: The pilot's name in "Running <name> JobAgent/<version> on <host>" (JAliEn writes "JAliEn").
PILOT_NAME = "gridpilot"
MB = 1 << 20
#: Where the OS release is read, in order (os-release(5)).
OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")

#: How each batch system's id is written on the BatchId line: the variable JAliEn would read it from. gridpilot's
#: own id (pilot/sitemap.batch_job_id) is "<system>:<id>".
_BATCH_VARIABLES = {"htcondor": "GlobalJobId", "slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "lsf": "LSB_JOBID",
                    "sge": "JOB_ID"}


def batch_id(batch: Optional[str]) -> str:
    """`BatchId GlobalJobId = "ce510.cern.ch#22591372.0#1663929146"`: the batch system's id of this pilot, named as
    JAliEn names it. An id gridpilot made itself (the CE's local backend) is GRIDPILOT_BATCH_ID's."""
    if not batch:
        return "BatchId none"
    system, sep, ident = batch.partition(":")
    variable = _BATCH_VARIABLES.get(system) if sep else None
    if variable is None:
        variable, ident = "GRIDPILOT_BATCH_ID", batch
    return f'BatchId {variable} = "{ident}"'


_BATCH_LINE = re.compile(r'^BatchId (\w+) = "(.*)"$')


def batch_id_of(text: str) -> Optional[str]:
    """gridpilot's id of the batch job ("slurm:123", "local:4242.1") a BatchId line names, else None."""
    m = _BATCH_LINE.match(text)
    if not m:
        return None
    system = next((s for s, v in _BATCH_VARIABLES.items() if v == m.group(1)), None)
    return f"{system}:{m.group(2)}" if system else m.group(2)


def created_workdir(path: Any) -> str:
    return f"Created workdir: {path}"


def running(host: str) -> str:
    """The pilot's own name and version, where JAliEn writes "Running JAliEn JobAgent/1.5.5-1 on <host>"."""
    return f"Running {PILOT_NAME} JobAgent/{__version__} on {host}"


def installation() -> str:
    """gridpilot's own line beside JAliEn's "Running" one: the version and where it runs from, the real path of its
    environment (a CVMFS tree's `<root>/<version>/<arch>`, with `latest` resolved), so that a trace says which of a
    CE's installations (pilot_version, docs/wheels.md) ran the job."""
    return (f"Pilot installation: gridpilot {__version__} at {os.path.realpath(sys.prefix)} "
            f"(CPython {platform.python_version()}, {platform.machine()})")


def _in_jdl(job: Any, key: str) -> bool:
    """Whether the job's JDL writes `key` (else the value is gridpilot's default)."""
    document = getattr(job, "document", None)
    return any(e.key.lower() == key.lower() for e in getattr(document, "entries", ()))


def limits(job: Any) -> List[str]:
    """The lines JAliEn's JobAgent writes about the job's resources, before it starts the JobWrapper: cores, disk
    (WorkDirectorySize) and memory (MemorySize, which JAliEn calls the virtual memory limit), in MB."""
    memory = "JDL" if _in_jdl(job, "MemorySize") else "default"
    return [
        f"Job requested {job.cpu_cores} CPU cores to run",
        f"Local disk space limit: {job.work_directory_size // MB}MB",
        f"Virtual memory limit ({memory}): {job.memory_size // MB}MB",
    ]


STARTING_WRAPPER = "Starting JobWrapper"
WRAPPER_STARTED = "JobWrapper started"
STARTING_EXECUTION = "Starting execution"


def ttl(seconds: int) -> str:
    return f"Job asks for a TTL of {seconds} seconds"


def wrapper_exit_code(code: Optional[int]) -> str:
    """JAliEn's line when the JobWrapper process is gone: its exit code (a negative one is the signal that ended it,
    as Python reports it)."""
    return f"JobWrapper exit code: {code}"


def deleting_directory(path: Any) -> str:
    return f"Deleting directory {path}"


def os_release(root: str = "/") -> Optional[str]:
    """PRETTY_NAME of os-release(5) under `root` ("Debian GNU/Linux 12 (bookworm)"), else NAME and VERSION; None when
    there is no such file (a minimal container image)."""
    for name in OS_RELEASE_FILES:
        try:
            text = (Path(root) / name).read_text(errors="replace")
        except OSError:
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep or key.strip().startswith("#"):
                continue
            try:
                words = shlex.split(value, comments=False)
            except ValueError:
                words = [value.strip().strip("\"'")]
            values[key.strip()] = " ".join(words)
        pretty = values.get("PRETTY_NAME") or " ".join(v for v in (values.get("NAME"), values.get("VERSION")) if v)
        if pretty:
            return pretty
    return None


def os_detected(root: str = "/") -> str:
    """JAliEn's line on the OS the payload runs in, read where the JobWrapper runs (inside the container, if any)."""
    return f'The following OS has been detected: "{os_release(root) or "unknown"}"'


def time_spent(wall_s: float, rusage: Mapping[str, float]) -> str:
    """`Execution completed. Time spent: …`. JAliEn copies what GNU time wrote about the payload; gridpilot says the
    same from the payload's own rusage: wall time until it exited, user and system CPU seconds, peak resident
    memory."""
    parts = [f"{wall_s:.2f} s elapsed"]
    if rusage:
        parts += [f"{rusage.get('utime_s', 0.0):.2f} s user", f"{rusage.get('stime_s', 0.0):.2f} s system",
                  f"{int(rusage.get('maxrss_kb', 0))} KB maximum resident"]
    return "Execution completed. Time spent: " + ", ".join(parts)


__all__ = ["PILOT_NAME", "STARTING_EXECUTION", "STARTING_WRAPPER", "WRAPPER_STARTED", "batch_id", "batch_id_of",
           "created_workdir",
           "deleting_directory", "limits", "os_detected", "os_release", "running", "time_spent", "ttl",
           "wrapper_exit_code"]
