"""local: pilots forked on this machine, each in its own session, for one-machine grids and demos.

There is no queue: a pilot runs as soon as it is submitted (the factory's max_running bounds how many), and it
ends as finished (exit 0) or failed. Its batch id (`<CE pid>.<n>`) reaches its environment as GRIDPILOT_BATCH_ID,
so the jobs' traces name it as they name a Slurm job id. The pilots live as long as the CE process: close() ends
those still running, as removing a batch system would.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import time
from typing import Dict, Optional, Sequence

from gridpilot.ce.backend import FAILED, FINISHED, RUNNING, BatchBackend, PilotSubmission, Resources
from gridpilot.errors import BatchError, NoSuchProcess

log = logging.getLogger("gridpilot.ce.local")

#: The variable the pilot's runner reads its batch id from (pilot/sitemap.batch_job_id).
BATCH_ID_VAR = "GRIDPILOT_BATCH_ID"
#: Ended pilots remembered for state_of; the factory asks soon after the end, so the oldest can go.
KEEP_ENDED = 1000
#: What a local pilot inherits from the CE's environment; the start-up script sets the rest.
INHERIT = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


class LocalBackend(BatchBackend):
    name = "local"

    def __init__(self, *, user: Optional[str] = None, kill_grace_s: float = 30.0, sysfs: str = "/sys") -> None:
        self.user = user
        self.kill_grace_s = kill_grace_s
        self.sysfs = sysfs
        self._procs: Dict[str, "subprocess.Popen[bytes]"] = {}
        self._ended: Dict[str, str] = {}
        self._numbers = itertools.count(1)

    def check_shapes(self, shapes: Sequence[Resources]) -> None:
        """A GPU shape only where this machine has that many GPUs of its kind: its pilots run here or nowhere."""
        wanted = [s for s in shapes if s.gpus]
        if not wanted:
            return
        from gridpilot import _native

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

    def submit(self, pilot: PilotSubmission) -> str:
        batch_id = f"{os.getpid()}.{next(self._numbers)}"
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
        return batch_id

    def states(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for batch_id, proc in list(self._procs.items()):
            rc = proc.poll()
            if rc is None:
                out[batch_id] = RUNNING
            else:
                self._ended[batch_id] = FINISHED if rc == 0 else FAILED
                del self._procs[batch_id]
        while len(self._ended) > KEEP_ENDED:
            del self._ended[next(iter(self._ended))]
        out.update(self._ended)
        return out

    def state_of(self, batch_id: str) -> Optional[str]:
        return self._ended.get(batch_id)

    def remove(self, batch_id: str) -> None:
        """SIGTERM to the start-up script (it passes it to the runner, which winds its jobs down), then, after
        kill_grace_s, whatever is left of the pilot's process tree is killed."""
        proc = self._procs.get(batch_id)
        if proc is None:
            if batch_id in self._ended:
                return
            raise BatchError(f"no local pilot {batch_id}")
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + self.kill_grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                self._kill_tree(proc)
        self.states()

    @staticmethod
    def _kill_tree(proc: "subprocess.Popen[bytes]") -> None:
        from gridpilot import _native

        try:
            _native.terminate_tree(proc.pid, grace_s=5)
        except NoSuchProcess:
            pass
        proc.wait(30)

    def close(self) -> None:
        for batch_id in list(self._procs):
            self.remove(batch_id)
