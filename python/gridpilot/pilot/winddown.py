"""When the JobAgent kills a JobWrapper that is still there, and what its trace says then.

Three things bound a wrapper's last phase: the upload grace after a limit kill (ttl_upload_grace, killupload.py), the
slot's end (drain_grace after the runner's SIGTERM) and a central kill (CENTRAL_KILL_BOUND_S after the payload's
kill). Each sets a deadline; the earlier one wins, except a central kill, which replaces it. WindDown keeps that
deadline, why it was set and, during an upload grace, what the wrapper has not uploaded yet; the agent's loop waits
for `due()` and kills the wrapper when `expired()` gives it the lines to trace.

Pure: the clock is passed in, the signals and the kill stay in pilot/agent.py.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from gridpilot.pilot import killupload

#: After a limit kill, the wrapper is killed this long after the upload grace ends: the time it needs to trace what it
#: did not start uploading once the grace was over (killupload.py); an upload still under way then is cut.
UPLOAD_KILL_MARGIN_S = 5.0
#: A wrapper told of a central kill (protocol.SIGNAL_CENTRAL_KILL) ends once the payload is gone, with nothing
#: uploaded; it is killed if it is still there this long after the payload's kill (an upload or a download under
#: way, a catalogue call central does not answer).
CENTRAL_KILL_BOUND_S = 3.0


class WindDown:
    """The deadline (time.monotonic()) at which a JobWrapper still there is killed, and why."""

    def __init__(self, drain_grace: float) -> None:
        self.drain_grace = drain_grace
        #: When the wrapper is killed if it is still there; None: no bound.
        self.at: Optional[float] = None
        #: What the trace says when the wrapper is killed at `at` ("": the slot's wind-down grace is over).
        self.why = ""
        #: After a limit kill, the outputs the wrapper has not uploaded yet (protocol.UPLOADS); None: no upload grace.
        self.uploads: Optional[Dict[str, Any]] = None
        #: The wrapper has been told the slot is ending, or is being ended for another reason (a central kill).
        self.wound_down = False

    def after_limit_kill(self, now: float, grace: float) -> None:
        """A limit is broken: the wrapper uploads for `grace` seconds, then is killed (UPLOAD_KILL_MARGIN_S later)."""
        self.uploads = {"pending": [], "current": None}
        until = now + grace + UPLOAD_KILL_MARGIN_S
        if self.at is None or until < self.at:
            # (A slot already ending keeps its own, shorter, bound.)
            self.at = until
            self.why = f"upload grace of {grace:.0f} s after the kill over: the JobWrapper is killed"

    def slot_ending(self, now: float) -> bool:
        """The slot is ending: the wrapper gets drain_grace. True when it is uploading after a limit kill, whose
        deadline then stays if it is the earlier one."""
        self.wound_down = True
        if self.uploads is not None:
            if self.at is None or now + self.drain_grace < self.at:
                self.at, self.why = now + self.drain_grace, ""
            return True
        self.at = now + self.drain_grace
        return False

    def after_central_kill(self, now: float) -> None:
        """Central killed the job and the wrapper was told: nothing is uploaded, it is killed CENTRAL_KILL_BOUND_S
        after `now` (the payload's end) if it is still there."""
        self.uploads = None
        self.wound_down = True
        self.at = now + CENTRAL_KILL_BOUND_S
        self.why = f"the JobWrapper is still there {CENTRAL_KILL_BOUND_S:.0f} s after the payload's kill: it is killed"

    def upload_progress(self, msg: Dict[str, Any]) -> None:
        """The wrapper's protocol.UPLOADS message: what it has still to upload, and the one under way."""
        if self.uploads is not None:
            self.uploads.update(pending=list(msg.get("pending") or []), current=msg.get("current"))

    def due(self) -> Optional[float]:
        """The deadline the agent's loop must wake for; None: nothing is due."""
        return self.at

    def expired(self, now: float) -> List[str]:
        """The trace lines for killing the wrapper if the deadline is past at `now` (empty: not yet, or none)."""
        if self.at is None or not now > self.at:
            return []
        lines = [self.why or f"wind-down grace of {self.drain_grace:.0f} s over: the job is killed"]
        if self.uploads is not None:
            lines.append(killupload.lost_at_kill(self.uploads["pending"], self.uploads["current"]))
        return lines
