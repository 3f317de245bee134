"""Job directories for `gridpilot offline` (pilot/offline.py), as a tower lays them out in an ARC session: job.json
and the input files. Used by the offline tests, locally and through a real A-REX."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

#: Every offline run of the tests is bounded by this: a hung one fails the test, not the session.
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Input:
    """One input: the file `name` in the job directory, holding `data`, known to the catalogue as `lfn`."""

    lfn: str
    data: bytes
    name: Optional[str] = None

    @property
    def file_name(self) -> str:
        return self.name or os.path.basename(self.lfn)


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def job_document(jdl: str, inputs: Sequence[Input] = (), *, job_id: int = 7, resubmission: int = 0,
                 **extra: Any) -> Dict[str, Any]:
    """job.json for `jdl` with `inputs` listed (size and both checksums of their data)."""
    doc: Dict[str, Any] = {
        "format": 1, "job_id": job_id, "resubmission": resubmission, "jdl": jdl, "user": "alice",
        "site": "NONET::SITE", "ce": "arc1",
        "inputs": [{"name": i.file_name, "lfn": i.lfn, "size": len(i.data), "adler32": adler32(i.data),
                    "md5": md5(i.data)} for i in inputs],
        "outputs_dir": "out",
    }
    doc.update(extra)
    return doc


def lay_out(job_dir: Path, doc: Mapping[str, Any], files: Mapping[str, bytes]) -> Path:
    """job.json and the files ({name: content}) in `job_dir`."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(doc))
    for name, data in files.items():
        path = job_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return job_dir


def make_job_dir(job_dir: Path, jdl: str, inputs: Sequence[Input] = (), **extra: Any) -> Path:
    return lay_out(job_dir, job_document(jdl, inputs, **extra), {i.file_name: i.data for i in inputs})


def offline_env() -> Dict[str, str]:
    """The test process's environment without a pilot configuration of the host's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}


def run_offline(job_dir: Path, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`gridpilot offline DIR --json ARGS` as its own process, as ARC runs it."""
    return subprocess.run([sys.executable, "-m", "gridpilot", "offline", str(job_dir), "--json", *args],
                          capture_output=True, text=True, timeout=timeout, env=offline_env())


def read_result(job_dir: Path) -> Dict[str, Any]:
    return json.loads((job_dir / "result.json").read_text())


def texts(result: Mapping[str, Any]) -> List[str]:
    return [e["text"] for e in result["trace"]]


def states(result: Mapping[str, Any]) -> List[str]:
    return [s["state"] for s in result["states"]]


#: A payload (shell_jdl) that writes its pid and its start time (field 22 of /proc/PID/stat, clock ticks since boot)
#: to payload.pid in the job directory, then sleeps as that same process: whether it is gone tells from a reused pid.
SLEEPER_SCRIPT = "set -- $(cat /proc/$$/stat); shift 21; echo $$ $1 > ../../payload.pid.tmp; " \
                 "mv ../../payload.pid.tmp ../../payload.pid; exec sleep 600"


def read_pid_file(path: Path) -> Optional[tuple]:
    """(pid, start time) from a SLEEPER_SCRIPT payload's file, None before it is there."""
    try:
        pid, start = path.read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid), int(start)


def _stat(pid: int) -> Optional[List[str]]:
    """/proc/PID/stat's fields after the name (the state is [0], the start time [19]), None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def host_pid(pid: int, start: int) -> Optional[int]:
    """The pid, as this process sees it, of the SLEEPER_SCRIPT payload that wrote (pid, start): the same when it ran
    in this PID namespace, else the one process whose start time is `start` and that runs `sleep 600` (the
    sandbox gave the payload a PID namespace of its own, where it has another pid). None: not found."""
    fields = _stat(pid)
    if fields is not None and int(fields[19]) == start:
        return pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:2]
        except OSError:
            continue
        if fields is not None and int(fields[19]) == start and argv == [b"sleep", b"600"]:
            return int(entry.name)
    return None


def process_alive(pid: int, start: int) -> bool:
    """Whether the process `pid` that started at `start` (clock ticks since boot) still exists: a pid reused by
    another process (another start time) or a zombie waiting to be reaped is not it."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == start
