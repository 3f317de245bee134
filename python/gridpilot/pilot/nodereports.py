"""What the JobRunner tells central about its node's failures: monitoring stalls its watchdog saw (pilot/watchdog.py)
and outages its agents rode out (their errorConnecting). Each goes to central as a node event (POST /nodes/events,
counted towards nodeBad: central/nodes.py) and, for a stall, as a line in the job's trace.

The runner's loop must not wait on central: every call has a short timeout and no retry of its own; what fails is
kept (at most MAX_PENDING, oldest dropped first) and tried again after RETRY_S, so a stall or an outage seen while
central is down is counted once it is back. A report central refuses (4xx) is dropped and logged: it would be refused
again (the job went back to the queue, say).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable

log = logging.getLogger("gridpilot.nodereports")

#: The node event kinds the pilot reports (central/nodes.py REPORTED_KINDS).
STALL = "stall"
ERROR_CONNECTING = "error_connecting"
#: Seconds between tries of what central did not take.
RETRY_S = 15.0
#: Reports kept while central is unreachable: a handful per job is plenty.
MAX_PENDING = 256
#: One call's timeout: the runner's loop waits this long at most per report.
CALL_TIMEOUT_S = 5.0


def stalled_text(seconds: float, limit_s: float, intervals: int, interval_s: float) -> str:
    """The trace line of a stall, as the job's trace shows it."""
    return (f"the monitoring loop has been stalled for {seconds:.0f} s (the JobRunner's watchdog allows "
            f"{limit_s:.0f} s: {intervals} intervals of {interval_s:g} s); reported to central against this node")


def resumed_text(seconds: float) -> str:
    return f"the monitoring loop is running again after a stall of {seconds:.0f} s"


@dataclass
class _Report:
    kind: str  # "event", "trace" or "probe"
    body: Dict[str, Any]
    #: Called with central's answer once it took the report (the node probe's record: pilot/probepost.py).
    done: Optional[Callable[[Dict[str, Any]], None]] = None


@dataclass
class NodeReports:
    """The runner's queue of reports to central about its node."""

    client: CentralClient
    clock: Callable[[], float] = time.monotonic
    pending: Deque[_Report] = field(default_factory=deque)
    next_try: float = 0.0
    #: Keys of the trace lines this runner appends: its own prefix, so a retried append is stored once.
    _prefix: str = field(default_factory=lambda: f"runner.{uuid.uuid4().hex[:12]}.")
    _seq: int = 0
    sent: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_central(cls, url: str, token: str, ca_file: Optional[str] = None) -> NodeReports:
        return cls(CentralClient(url, token, timeout=CALL_TIMEOUT_S, retries=0, ca_file=ca_file))

    def event(self, kind: str, seconds: float, job_id: Optional[int], detail: str) -> None:
        body: Dict[str, Any] = {"kind": kind, "seconds": round(max(0.0, seconds), 3), "job_id": job_id,
                                "detail": detail}
        self._add(_Report("event", body))

    def trace(self, job_id: int, text: str) -> None:
        self._seq += 1
        entry = {"ts": time.time(), "category": "trace", "text": text, "key": f"{self._prefix}{self._seq}"}
        self._add(_Report("trace", {"job_id": job_id, "entry": entry}))

    def probe(self, body: Dict[str, Any], done: Callable[[Dict[str, Any]], None]) -> None:
        """The node's probe (POST /nodes/probe: pilot/probepost.py); `done` gets central's answer."""
        self._add(_Report("probe", body, done))

    def _add(self, r: _Report) -> None:
        if len(self.pending) >= MAX_PENDING:
            dropped = self.pending.popleft()
            log.warning("too many node reports waiting for central: dropped %s", dropped.body)
        self.pending.append(r)
        self.next_try = 0.0

    def flush(self) -> None:
        """Send what is pending, in order, until central does not answer (then again after RETRY_S)."""
        if not self.pending or self.clock() < self.next_try:
            return
        while self.pending:
            r = self.pending[0]
            try:
                if r.kind == "event":
                    answer = self.client.report_node_event(**{k: v for k, v in r.body.items() if v is not None})
                    self.sent.append(answer)
                    if answer.get("bad"):
                        log.warning("central marks this node nodeBad: %s", answer.get("reason"))
                elif r.kind == "probe":
                    answer = self.client.post_node_probe(r.body)
                    if r.done is not None:
                        r.done(answer)
                else:
                    self.client.append_trace(r.body["job_id"], [r.body["entry"]])
            except CentralUnreachable as e:
                self.next_try = self.clock() + RETRY_S
                log.info("node report held until central answers (%s)", e)
                return
            except CentralError as e:
                # A probe is long: its refusal names the field, which is what the operator needs.
                shown = "(the node probe)" if r.kind == "probe" else r.body
                log.warning("central refused a node report %s: %s", shown, e)
            self.pending.popleft()

    def next_due(self) -> Optional[float]:
        return self.next_try if self.pending else None

    def close(self) -> None:
        self.client.close()


__all__ = ["ERROR_CONNECTING", "NodeReports", "STALL", "resumed_text", "stalled_text"]
