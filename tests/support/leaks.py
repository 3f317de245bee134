"""Pilot processes a test module leaves behind: a JobAgent or JobWrapper of this interpreter still alive after the
module's last test, started while the module ran. The conftest checks every module of the real-process levels, so a
leak is blamed on the module that made it, not on whichever later test happens to look (the demo's test once failed
on an agent some earlier module had left)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import List

import psutil

#: The pieces that must never outlive their pilot (the runner and the CE are the tests' own children and
#: stopped by their fixtures; their leftovers show up as these).
_MODULES = ("gridpilot.pilot.agent", "gridpilot.pilot.wrapper")


@dataclass(frozen=True)
class Leftover:
    pid: int
    ppid: int
    age_s: float
    cmdline: str
    batch_id: str

    def __str__(self) -> str:
        return (f"pid {self.pid} (parent {self.ppid}, {self.age_s:.0f} s old, batch {self.batch_id or '-'}): "
                f"{self.cmdline[:300]}")


def pilot_processes(since: float) -> List[Leftover]:
    """Agents and wrappers of this interpreter, not zombies, started at or after `since` (time.time())."""
    now = time.time()
    found = []
    for p in psutil.process_iter():
        try:
            cmd = p.cmdline()
            if (len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m" or cmd[2] not in _MODULES
                    or p.create_time() < since - 1 or p.status() == psutil.STATUS_ZOMBIE):
                continue
            try:
                batch = p.environ().get("GRIDPILOT_BATCH_ID", "")
            except psutil.Error:
                batch = "?"
            found.append(Leftover(p.pid, p.ppid(), now - p.create_time(), " ".join(cmd), batch))
        except psutil.Error:
            continue
    return found


def wait_gone(since: float, timeout: float) -> List[Leftover]:
    """pilot_processes(since) once they have had `timeout` seconds to end (a pilot winding down after its test's
    last assertion is not a leak)."""
    deadline = time.monotonic() + timeout
    while True:
        left = pilot_processes(since)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def kill(left: List[Leftover]) -> None:
    for item in left:
        try:
            psutil.Process(item.pid).kill()
        except psutil.Error:
            pass
