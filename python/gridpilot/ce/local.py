"""local: pilots forked on this machine, each in its own session, for one-machine grids and demos.

There is no queue: a pilot runs as soon as it is submitted (the factory's max_running bounds how many), and it
ends as finished (exit 0) or failed. Its batch id (`<CE pid>.<n>`) reaches its environment as GRIDPILOT_BATCH_ID,
so the jobs' traces name it as they name a Slurm job id. The pilots live as long as the CE process: close() ends
those still running, as removing a batch system would.

A CE that stops without close() (`--once`, a crash) leaves its pilots running on their own. Each pilot's directory
holds `local.json` (its pid, the kernel's start time of that pid, its output file), so the next CE process can take
it back (adopt): it then watches the pid (the start time guards against a reused pid) and, as the pilot is not its
child and its exit status is nobody's to collect, reads how it ended from the last line its start-up script writes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from gridpilot import _native
from gridpilot.ce.backend import FAILED, FINISHED, RUNNING, BatchBackend, PilotSubmission, Resources, write_record
from gridpilot.errors import BatchError, NoSuchProcess

log = logging.getLogger("gridpilot.ce.local")

#: The variable the pilot's runner reads its batch id from (pilot/sitemap.batch_job_id).
BATCH_ID_VAR = "GRIDPILOT_BATCH_ID"
#: Ended pilots remembered for state_of; the factory asks soon after the end, so the oldest can go.
KEEP_ENDED = 1000
#: What a local pilot inherits from the CE's environment; the start-up script sets the rest.
INHERIT = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
#: The file in a pilot's directory that lets a later CE process find its process again.
RECORD_NAME = "local.json"
#: The start-up script's last words (script.py's TEMPLATE): how an adopted pilot ended.
_EXIT_LINE = re.compile(rb"runner exited with (\d+)")


@dataclass(frozen=True)
class _Adopted:
    pid: int
    start: int
    output: Path


def _exit_from_output(output: Path) -> Optional[int]:
    """An adopted pilot's runner's exit status, from the last line its script wrote; None when the script never
    said (killed)."""
    try:
        with open(output, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read()
    except OSError:
        return None
    found = _EXIT_LINE.findall(tail)
    return int(found[-1]) if found else None


class LocalBackend(BatchBackend):
    name = "local"

    def __init__(self, *, user: Optional[str] = None, kill_grace_s: float = 30.0, sysfs: str = "/sys") -> None:
        self.user = user
        self.kill_grace_s = kill_grace_s
        self.sysfs = sysfs
        self._procs: Dict[str, "subprocess.Popen[bytes]"] = {}
        self._adopted: Dict[str, _Adopted] = {}
        self._ended: Dict[str, str] = {}
        #: Exit statuses of ended pilots (negative: the signal that killed the script), as long as _ended.
        self._codes: Dict[str, Optional[int]] = {}
        self._numbers = itertools.count(1)

    def check_shapes(self, shapes: Sequence[Resources]) -> None:
        """A GPU shape only where this machine has that many GPUs of its kind: its pilots run here or nowhere."""
        wanted = [s for s in shapes if s.gpus]
        if not wanted:
            return
        gpus = _native.list_gpus(sysfs=self.sysfs)
        for s in wanted:
            fit = [g for g in gpus if s.gpu_vendor.casefold() in g.vendor.casefold()
                   and s.gpu_model.casefold() in (g.model or "").casefold()]
            if len(fit) < s.gpus:
                seen = ", ".join(f"{g.vendor} {g.model or '(model unknown)'} at {g.pci_address}" for g in gpus)
                kind = f" {s.gpu_label}" if s.gpu_label else ""
                raise BatchError(
                    f"shape {s.label()} asks for {s.gpus}{kind} GPU(s), and this machine has {len(fit)} of them "
                    f"({seen or f'no GPU in {self.sysfs}'}): the local backend starts pilots on this machine only, "
                    "so remove the shape's gpus or use a batch system that has GPU nodes")

    def _new_id(self) -> str:
        # A restarted CE may have the pid of the one before it, whose pilots it adopted: never reuse their ids.
        while True:
            batch_id = f"{os.getpid()}.{next(self._numbers)}"
            if batch_id not in self._procs and batch_id not in self._adopted and batch_id not in self._ended:
                return batch_id

    def submit(self, pilot: PilotSubmission) -> str:
        batch_id = self._new_id()
        env = {k: os.environ[k] for k in INHERIT if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(pilot.env or {})
        env[BATCH_ID_VAR] = f"local:{batch_id}"
        try:
            with open(pilot.output, "ab") as out:
                proc = subprocess.Popen(
                    ["/bin/bash", str(pilot.script)], cwd=pilot.workdir, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=self.user,
                )
        except (OSError, subprocess.SubprocessError) as e:
            raise BatchError(f"cannot start local pilot {pilot.name} ({pilot.script}): {e}") from e
        self._procs[batch_id] = proc
        start = _native.start_time(proc.pid, live_only=True)
        if start is not None:  # None: it has already ended, and then there is nothing to adopt later
            try:
                write_record(pilot.workdir / RECORD_NAME, {"batch_id": batch_id, "pid": proc.pid, "start": start,
                                                           "output": str(pilot.output)})
            except OSError as e:
                log.warning("pilot %s: %s not written (a restarted CE will not find it): %s", batch_id, RECORD_NAME, e)
        return batch_id

    def adopt(self, batch_id: str, workdir: Path) -> None:
        if batch_id in self._procs:
            return
        try:
            rec = json.loads((workdir / RECORD_NAME).read_text())
            pid, start, output = int(rec["pid"]), int(rec["start"]), Path(rec["output"])
            if rec["batch_id"] != batch_id:
                raise ValueError(f"it is the record of {rec['batch_id']}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("local pilot %s in %s cannot be adopted: %s", batch_id, workdir, e)
            return
        self._adopted[batch_id] = _Adopted(pid, start, output)

    def _alive(self, a: _Adopted) -> bool:
        return _native.start_time(a.pid, live_only=True) == a.start

    def states(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for batch_id, proc in list(self._procs.items()):
            rc = proc.poll()
            if rc is None:
                out[batch_id] = RUNNING
            else:
                self._ended[batch_id] = FINISHED if rc == 0 else FAILED
                self._codes[batch_id] = rc
                del self._procs[batch_id]
        for batch_id, a in list(self._adopted.items()):
            if self._alive(a):
                out[batch_id] = RUNNING
            else:
                # Not this process's child: its exit status is nobody's to collect; its script's last line says.
                code = _exit_from_output(a.output)
                self._ended[batch_id] = FINISHED if code == 0 else FAILED
                self._codes[batch_id] = code
                del self._adopted[batch_id]
        while len(self._ended) > KEEP_ENDED:
            oldest = next(iter(self._ended))
            del self._ended[oldest]
            self._codes.pop(oldest, None)
        out.update(self._ended)
        return out

    def state_of(self, batch_id: str) -> Optional[str]:
        return self._ended.get(batch_id)

    def exit_code(self, batch_id: str) -> Optional[int]:
        return self._codes.get(batch_id)

    def remove(self, batch_id: str) -> None:
        """SIGTERM to the start-up script (it passes it to the runner, which winds its jobs down), then, after
        kill_grace_s, whatever is left of the pilot's process tree is killed."""
        proc = self._procs.get(batch_id)
        adopted = self._adopted.get(batch_id)
        if proc is None and adopted is None:
            if batch_id in self._ended:
                return
            raise BatchError(f"no local pilot {batch_id}")
        pid = proc.pid if proc is not None else adopted.pid  # type: ignore[union-attr]
        # An adopted pilot is no child of ours: its pid is signalled only while it names the process the record
        # was written for. Our own child's pid is ours until we reap it.
        start = adopted.start if adopted is not None else None

        def running() -> bool:
            return proc.poll() is None if proc is not None else self._alive(adopted)  # type: ignore[arg-type]

        if running():
            _native.signal_process(pid, signal.SIGTERM, start_time=start)
            deadline = time.monotonic() + self.kill_grace_s
            while running() and time.monotonic() < deadline:
                time.sleep(0.1)
            if running():
                self._kill_tree(pid, start)
                deadline = time.monotonic() + 30
                while running() and time.monotonic() < deadline:
                    time.sleep(0.1)
        self.states()

    @staticmethod
    def _kill_tree(pid: int, start: Optional[int]) -> None:
        try:
            _native.terminate_tree(pid, grace_s=5, start_time=start)
        except NoSuchProcess:
            pass

    def close(self) -> None:
        for batch_id in [*self._procs, *self._adopted]:
            self.remove(batch_id)
