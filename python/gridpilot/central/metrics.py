"""Prometheus text exposition (format 0.0.4), written by hand: a few counters and histograms need no library.

Counters and histograms are per process (Prometheus scrapes each central process and sums); the jobs-by-state
gauge is read from the database at scrape time, so every process reports the same, whole-queue numbers.
"""

from __future__ import annotations

import bisect
import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Labels = Tuple[Tuple[str, str], ...]

#: Seconds. Fine below 20 ms, where the match and heartbeat targets are.
LATENCY_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Optional[Tuple[str, str]] = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: Dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> List[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        out += [f"{self.name}{_labels(k)} {_num(v)}" for k, v in items]
        return out


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(buckets)
        self._data: Dict[Labels, Tuple[List[int], List[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[i] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        d = self._data.get(tuple(sorted(labels.items())))
        return sum(d[0]) if d else 0

    def render(self) -> List[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            acc = 0
            for bound, n in zip(self.buckets, counts):
                acc += n
                out.append(f"{self.name}_bucket{_labels(key, ('le', _num(bound)))} {acc}")
            acc += counts[-1]
            out.append(f"{self.name}_bucket{_labels(key, ('le', '+Inf'))} {acc}")
            out.append(f"{self.name}_sum{_labels(key)} {repr(total)}")
            out.append(f"{self.name}_count{_labels(key)} {acc}")
        return out


class Metrics:
    """The service's metrics for one process."""

    def __init__(self) -> None:
        self.requests = Counter("gridpilot_http_requests_total", "HTTP requests by route, method and status.")
        self.latency = Histogram("gridpilot_http_request_duration_seconds", "HTTP request latency by route.")
        self.matches = Counter("gridpilot_matches_total", "Match requests by result (assigned or empty).")
        self.match_latency = Histogram("gridpilot_match_duration_seconds", "Time to find and assign a job.")
        self.heartbeats = Counter("gridpilot_heartbeats_total", "Job heartbeats recorded (one per job).")
        self.heartbeat_requests = Counter("gridpilot_heartbeat_requests_total", "Bulk heartbeat requests.")
        self.status_reports = Counter("gridpilot_status_reports_total", "State reports accepted, by new state.")
        self.submissions = Counter("gridpilot_submissions_total", "Jobs submitted.")
        self.sweeps = Counter("gridpilot_sweeper_changes_total", "Jobs the sweeper changed, by new state.")

    def _all(self) -> Iterable[object]:
        return (self.requests, self.latency, self.matches, self.match_latency, self.heartbeats,
                self.heartbeat_requests, self.status_reports, self.submissions, self.sweeps)

    def render(self, jobs_by_state: Mapping[str, int], states: Sequence[str],
               ce_pilots: Sequence[Mapping[str, object]] = (), pilot_states: Sequence[str] = ()) -> str:
        lines = ["# HELP gridpilot_jobs Jobs in the queue by state (whole database).", "# TYPE gridpilot_jobs gauge"]
        lines += [f'gridpilot_jobs{{state="{s}"}} {jobs_by_state.get(s, 0)}' for s in states]
        lines += ["# HELP gridpilot_ce_pilots Pilots in each CE's batch system by state, as the CE last reported.",
                  "# TYPE gridpilot_ce_pilots gauge"]
        for row in ce_pilots:
            for s in pilot_states:
                labels = (("ce", str(row["ce"])), ("site", str(row["site"])), ("state", s))
                lines.append(f"gridpilot_ce_pilots{_labels(labels)} {row[s]}")
        for m in self._all():
            lines += m.render()  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
