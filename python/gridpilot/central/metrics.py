"""Central's Prometheus metrics, rendered by prometheus_client from a CollectorRegistry of each Central's own (never
the global one: several Centrals in one process, as in the tests, neither share nor collide).

Counters and histograms are per process (Prometheus scrapes each central process and sums), except in the workers
of `central serve --workers N`, which share theirs through prometheus_client's multiprocess mode (see Metrics); the
jobs-by-state and pilots-by-CE gauges are read from the database at scrape time, so every process reports the same,
whole-queue numbers. The standard process_* (CPU, memory, open files), python_gc_* and python_info come with them
(not in the workers' mode: they would be one worker's).

prometheus_client also exposes a `<name>_created` series per counter and histogram (when it started counting); set
PROMETHEUS_DISABLE_CREATED_SERIES=True in central's environment to leave them out.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, values)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

#: Seconds. Fine below 20 ms, where the match and heartbeat targets are.
LATENCY_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

JobCounts = Callable[[], Mapping[str, int]]
PilotCounts = Callable[[], Sequence[Mapping[str, object]]]
BadNodes = Callable[[], Mapping[str, int]]
#: Probed nodes counted by ("arch" | "runtime" | "gpu") -> {(site, value): nodes} (central/nodeprobes.counts).
NodeCounts = Callable[[], Mapping[str, Mapping[Tuple[str, str], int]]]
#: The node gauges: name, help, the label of the value beside site, and the key of NodeCounts they read.
_NODE_GAUGES = (
    ("gridpilot_nodes", "Worker nodes seen within a day that posted a probe, by site and architecture.", "arch",
     "arch"),
    ("gridpilot_nodes_runtime", "Worker nodes seen within a day whose probe started a container with this runtime, "
     "by site.", "runtime", "runtime"),
    ("gridpilot_nodes_gpu", "Worker nodes seen within a day with at least one GPU of this model (from their probe), "
     "by site.", "model", "gpu"),
)


class _QueueCollector(Collector):
    """The gauges read from the database when scraped."""

    def __init__(self, jobs: JobCounts, states: Sequence[str], pilots: PilotCounts,
                 pilot_states: Sequence[str], bad_nodes: Optional[BadNodes] = None,
                 node_counts: Optional[NodeCounts] = None) -> None:
        self.jobs, self.states = jobs, list(states)
        self.pilots, self.pilot_states = pilots, list(pilot_states)
        self.bad_nodes = bad_nodes
        self.node_counts = node_counts

    def describe(self) -> Iterable[Metric]:
        return list(self._families(empty=True))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(empty=False))

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("gridpilot_jobs", "Jobs in the queue by state (whole database).", labels=["state"])
        pilots = GaugeMetricFamily("gridpilot_ce_pilots", "Pilots in each CE's batch system by state, as the CE last "
                                   "reported.", labels=["ce", "site", "state"])
        bad = GaugeMetricFamily("gridpilot_nodes_bad", "Worker nodes marked nodeBad (matched no more until an "
                                "operator clears them), by site.", labels=["site"])
        if not empty:
            counts = self.jobs()
            for s in self.states:
                jobs.add_metric([s], counts.get(s, 0))
            for row in self.pilots():
                for s in self.pilot_states:
                    pilots.add_metric([str(row["ce"]), str(row["site"]), s], float(row[s]))  # type: ignore[arg-type]
            for site, n in sorted((self.bad_nodes() if self.bad_nodes else {}).items()):
                bad.add_metric([site], n)
        yield jobs
        yield pilots
        yield bad
        yield from self._node_families(empty=empty)

    def _node_families(self, *, empty: bool) -> Iterator[Metric]:
        counts = self.node_counts() if self.node_counts is not None and not empty else {}
        for name, doc, label, key in _NODE_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["site", label])
            for (site, value), n in sorted(counts.get(key, {}).items()):
                family.add_metric([site, value], n)
            yield family


def multiprocess() -> bool:
    """Whether this process's counters live in prometheus_client's multiprocess files: PROMETHEUS_MULTIPROC_DIR was
    set when prometheus_client was first imported (as in each worker of `central serve --workers N`)."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The service's metrics for one process: the counters and histograms the routes update, and the registry that
    renders them with the database's gauges and the process's standard metrics."""

    def __init__(self, jobs: JobCounts, states: Sequence[str], pilots: PilotCounts,
                 pilot_states: Sequence[str], bad_nodes: Optional[BadNodes] = None,
                 node_counts: Optional[NodeCounts] = None) -> None:
        self.registry = r = CollectorRegistry()
        # Label names in alphabetical order: the order they are written in, as before prometheus_client.
        self.requests = Counter("gridpilot_http_requests", "HTTP requests by route, method and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("gridpilot_http_request_duration_seconds", "HTTP request latency by route.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.matches = Counter("gridpilot_matches", "Match requests by result (assigned or empty).", ["result"],
                               registry=r)
        self.match_latency = Histogram("gridpilot_match_duration_seconds", "Time to find and assign a job.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.heartbeats = Counter("gridpilot_heartbeats", "Job heartbeats recorded (one per job).", registry=r)
        self.heartbeat_requests = Counter("gridpilot_heartbeat_requests", "Bulk heartbeat requests.", registry=r)
        self.status_reports = Counter("gridpilot_status_reports", "State reports accepted, by new state.", ["state"],
                                      registry=r)
        self.submissions = Counter("gridpilot_submissions", "Jobs submitted.", registry=r)
        self.sweeps = Counter("gridpilot_sweeper_changes", "Jobs the sweeper changed, by new state.", ["state"],
                              registry=r)
        queue = _QueueCollector(jobs, states, pilots, pilot_states, bad_nodes, node_counts)
        if multiprocess():
            # `central serve --workers N` (central/workers.py): the counters above write to files shared by the
            # workers; what is rendered is every worker's sum, whichever worker is asked. The process_* and
            # python_* series would be this one worker's, so they are left out.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)
            self.exposed.register(queue)
            return
        self.exposed = r
        r.register(queue)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def served(self) -> Dict[str, float]:
        """What this host served since its processes started, for central's history (history.py): match requests,
        jobs assigned, heartbeat job-updates. With `--workers N` the sum over the workers (the multiprocess files,
        read without the database gauges); else this process's own counters."""
        wanted = ("gridpilot_matches_total", "gridpilot_heartbeats_total")
        if multiprocess():
            families: Iterable[Metric] = MultiProcessCollector(None).collect()  # type: ignore[arg-type]
        else:
            families = [*self.matches.collect(), *self.heartbeats.collect()]
        out = {"matches": 0.0, "assigned": 0.0, "heartbeats": 0.0}
        for family in families:
            for sample in family.samples:
                if sample.name not in wanted:
                    continue
                if sample.name == "gridpilot_heartbeats_total":
                    out["heartbeats"] += sample.value
                else:
                    out["matches"] += sample.value
                    if sample.labels.get("result") == "assigned":
                        out["assigned"] += sample.value
        return out

    def render(self, accept: Optional[str] = None) -> Tuple[bytes, str]:
        """The exposition for a scraper's Accept header (OpenMetrics when it asks for it, else the text format
        0.0.4) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.exposed), content_type


__all__ = ["LATENCY_BUCKETS", "Metrics"]
