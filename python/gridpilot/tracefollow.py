"""Reading a job's trace as it grows (`trace --follow`, `submit --wait`) without losing a line that became visible
late.

Central dates each line when the request that brings it arrives (central/jobs.py), and two requests in flight may
commit in either order: a line dated t1 can become visible after one dated t2 > t1 was read. A reader that asks only
for the lines after the last date it saw skips it for good (`submit --wait` missed a job's ASSIGNED line that way,
under load). So each read reaches back OVERLAP_S before that date and drops the lines it already has, by their row
id; a read that fills a whole page moves on without the overlap, so a burst of lines cannot hold the reader still.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional

from gridpilot.client import CentralClient

#: Longer than any transaction of central's takes to commit (SQLite's busy wait included), short enough that a
#: read brings back few lines twice.
OVERLAP_S = 60.0
#: GET /jobs/{id}/trace's default page (central/app.py): a read that returns this many may have more after it.
PAGE = 10_000


def _identity(entry: Dict[str, Any]) -> Hashable:
    # A central from before the id was in the answer: the line's own fields tell two lines apart well enough.
    ident = entry.get("id")
    return ident if ident is not None else (entry["ts"], entry["category"], entry["text"], entry.get("key"))


class TraceCursor:
    """The lines of one job's trace not yet returned, in central's order, one read() at a time."""

    def __init__(self, client: CentralClient, job_id: int) -> None:
        self._client = client
        self._job_id = job_id
        self._last_ts: Optional[float] = None
        self._seen: Dict[Hashable, float] = {}
        self._overlap = True

    def read(self) -> List[Dict[str, Any]]:
        since = None
        if self._last_ts is not None:
            since = self._last_ts - OVERLAP_S if self._overlap else self._last_ts
        got = self._client.trace(self._job_id, since=since)
        new = []
        for e in got:
            ident = _identity(e)
            if ident not in self._seen:
                self._seen[ident] = e["ts"]
                new.append(e)
        if got:
            self._last_ts = max(self._last_ts or got[-1]["ts"], got[-1]["ts"])
        self._overlap = len(got) < PAGE
        # What lies before the next read's window can never come back: forget it, so a long follow stays small.
        horizon = (self._last_ts or 0.0) - OVERLAP_S - 1.0
        if len(self._seen) > 1000:
            self._seen = {k: ts for k, ts in self._seen.items() if ts >= horizon}
        return new
