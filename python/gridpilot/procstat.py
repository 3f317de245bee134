"""A process's identity from /proc: (pid, start time) names a process; a pid alone may have been reused by another
one since it was learnt. Here, below every piece, because both the pilot (its subreapers) and the CE's local back
end (pilots it adopts after a restart) check it."""

from __future__ import annotations

from typing import Optional


def start_time(pid: int, proc: str = "/proc", *, live_only: bool = False) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of stat), None when there is no such process
    (`live_only`: nor when it has exited and is a zombie waiting to be reaped)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name sits between the first "(" and the last ")" and may hold spaces or parentheses; the state
    # (field 3) follows it.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        if live_only and fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None
