"""A job's trace as ALICE's tools show it, and the state lines central writes (docs/traces.md).

A trace record is {"ts", "category", "text", ...} (central's GET /api/v1/jobs/ID/trace); rendered it reads as a JAliEn
trace does:

    Sep 23 12:40:03 [state ]: Job ASSIGNED to: ALICE::CERN::Yerevan

the time (local by default, UTC on request; English month names whatever the locale, so the text is the same on
every machine), the category in brackets followed by one space (JAliEn's padding), then the text.

The state lines central writes use JAliEn's sentences; readers that want the state a line sets use state_of().
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

#: English abbreviations, as JAliEn prints them, independent of the locale (strftime's %b is not).
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_TRANSITION = re.compile(r"^Job state transition from ([A-Z_]+) to ([A-Z_]+)$")
_ASSIGNED = re.compile(r"^Job ASSIGNED to: ")
# gridpilot's own state lines (submission, resubmission): the state name, then a colon.
_OWN = re.compile(r"^([A-Z][A-Z_]+):")


def timestamp(ts: float, *, utc: bool = False) -> str:
    """`Mon DD HH:MM:SS`, as JAliEn dates a trace line (no year, no fraction)."""
    when = (datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc) if utc
            else datetime.datetime.fromtimestamp(ts))
    return f"{MONTHS[when.month - 1]} {when.day:02d} {when:%H:%M:%S}"


def render(entry: Mapping[str, Any], *, utc: bool = False) -> str:
    """One trace record as one line of JAliEn's trace: `Mon DD HH:MM:SS [category ]: text`. A text of several lines
    keeps its later lines indented under the first, so that every line of output that starts at the margin is a
    record."""
    return _line(timestamp(float(entry["ts"]), utc=utc), entry)


def render_all(entries: Iterable[Mapping[str, Any]], *, utc: bool = False) -> List[str]:
    """render() of each record, the date and clock formatted once per minute of the trace (UTC) or once per second
    (local time, whose offset need not be whole minutes) rather than once per line: a web page shows 10,000 lines,
    and a datetime per line was the largest cost of drawing it."""
    stamps: Dict[int, str] = {}
    out = []
    for entry in entries:
        ts = float(entry["ts"])
        second = math.floor(ts)
        if utc:
            minute, sec = divmod(second, 60)
            prefix = stamps.get(minute)
            if prefix is None:
                prefix = stamps[minute] = timestamp(minute * 60.0, utc=True)[:-2]
            out.append(_line(f"{prefix}{sec:02d}", entry))
            continue
        stamp = stamps.get(second)
        if stamp is None:
            stamp = stamps[second] = timestamp(ts, utc=utc)
        out.append(_line(stamp, entry))
    return out


def _line(stamp: str, entry: Mapping[str, Any]) -> str:
    text = str(entry.get("text", "")).replace("\r\n", "\n").replace("\n", "\n    ")
    return f"{stamp} [{entry['category']} ]: {text}"


def transition(old: str, new: str) -> str:
    """JAliEn's sentence for a state change central records."""
    return f"Job state transition from {old} to {new}"


def assigned(site: str) -> str:
    """JAliEn's sentence for a match: the job is ASSIGNED to a site."""
    return f"Job ASSIGNED to: {site}"


def state_of(text: str) -> Optional[str]:
    """The state a `state` line puts the job in ("RUNNING" for "Job state transition from STARTED to RUNNING"), or
    None for a state line that changes no state (a resubmission refused, say)."""
    m = _TRANSITION.match(text)
    if m:
        return m.group(2)
    if _ASSIGNED.match(text):
        return "ASSIGNED"
    m = _OWN.match(text)
    return m.group(1) if m else None


__all__ = ["MONTHS", "assigned", "render", "render_all", "state_of", "timestamp", "transition"]
