"""The CE's own Prometheus /metrics (when `metrics_port` is set): what it submitted, what is in its batch system,
how its pilots ended, whether central answers; plus the standard process_*, python_gc_* and python_info.

The numbers are read at scrape time from the CE's counters (stats.py) and central's reachability (reach.py), into a
CollectorRegistry of its own; prometheus_client's threaded HTTP server serves it until the CE stops (close()).
prometheus_client is not a worker-node dependency: it comes with the `ce` (and `central`) extra.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gridpilot import __version__
from gridpilot.ce.reach import CentralReach
from gridpilot.ce.stats import IN_BATCH_STATES, CEStats

#: Every CE metric of this module, for the docs and the tests.
NAMES = (
    "gridpilot_ce_info",
    "gridpilot_ce_pilots_in_batch",
    "gridpilot_ce_pilots_submitted_total",
    "gridpilot_ce_pilots_ended_total",
    "gridpilot_ce_pilots_removed_total",
    "gridpilot_ce_central_reachable",
    "gridpilot_ce_central_last_contact_timestamp_seconds",
    "gridpilot_ce_cycles_total",
    "gridpilot_ce_cycle_errors_total",
    "gridpilot_ce_install_missing",
)


class _CECollector(Collector):
    def __init__(self, stats: CEStats, reach: CentralReach) -> None:
        self.stats = stats
        self.reach = reach

    def describe(self) -> Iterable[Metric]:
        return list(self._families(empty=True))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(empty=False))

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        s = self.stats.snapshot()
        info = GaugeMetricFamily("gridpilot_ce_info", "This CE: its site, CE name, batch system and gridpilot version "
                                 "(always 1).", labels=["backend", "ce", "site", "version"])
        # Not gridpilot_ce_pilots: that is central's, of every CE, with ce and site labels.
        pilots = GaugeMetricFamily("gridpilot_ce_pilots_in_batch", "Pilots in the batch system by state, as the last "
                                   "cycle saw them.", labels=["state"])
        submitted = CounterMetricFamily("gridpilot_ce_pilots_submitted", "Pilots submitted by this CE process, by "
                                        "resource shape.", labels=["shape"])
        ended = CounterMetricFamily("gridpilot_ce_pilots_ended", "Pilots this CE process saw end, by the reason of "
                                    "their runner's exit code (unknown: none recorded).", labels=["reason"])
        removed = CounterMetricFamily("gridpilot_ce_pilots_removed", "Pilots removed because they stayed queued or "
                                      "held past max_queue_time.")
        reachable = GaugeMetricFamily("gridpilot_ce_central_reachable", "1 when central answered the last call, "
                                      "else 0.")
        contact = GaugeMetricFamily("gridpilot_ce_central_last_contact_timestamp_seconds", "Unix time of central's "
                                    "last answer (absent before the first).")
        cycles = CounterMetricFamily("gridpilot_ce_cycles", "CE cycles run.")
        errors = CounterMetricFamily("gridpilot_ce_cycle_errors", "CE cycles that had errors (central unreachable is "
                                     "not one: see gridpilot_ce_central_reachable).")
        missing = GaugeMetricFamily("gridpilot_ce_install_missing", "1 for each shape that gets no pilot because the "
                                    "pinned pilot_version has no installation for its arch (last cycle).",
                                    labels=["shape"])
        if not empty:
            for shape in sorted(s.missing):
                missing.add_metric([shape], 1)
            info.add_metric([s.backend, s.ce, s.site, __version__], 1)
            for state in IN_BATCH_STATES:
                pilots.add_metric([state], s.in_batch.get(state, 0))
            for shape, n in sorted(s.submitted.items()):
                submitted.add_metric([shape], n)
            for reason, n in sorted(s.ended.items()):
                ended.add_metric([reason], n)
            removed.add_metric([], s.removed)
            reachable.add_metric([], 1 if self.reach.reachable else 0)
            if self.reach.last_contact is not None:
                contact.add_metric([], self.reach.last_contact)
            cycles.add_metric([], s.cycles)
            errors.add_metric([], s.cycle_errors)
        yield from (info, pilots, submitted, ended, removed, reachable, contact, cycles, errors, missing)


def registry_for(stats: CEStats, reach: CentralReach) -> CollectorRegistry:
    """A registry of this CE's metrics and the process's standard ones (never the global REGISTRY)."""
    registry = CollectorRegistry()
    registry.register(_CECollector(stats, reach))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsServer:
    """/metrics on `address:port` in a thread of its own, until close()."""

    def __init__(self, registry: CollectorRegistry, address: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=address, registry=registry)
        self.address = address
        self.port: int = self._server.server_port
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()  # else the port stays taken until the process ends
        self._thread.join(10)


def serve(stats: CEStats, reach: CentralReach, address: str, port: int) -> MetricsServer:
    """Start serving; OSError when the address cannot be bound."""
    return MetricsServer(registry_for(stats, reach), address, port)


__all__ = ["NAMES", "MetricsServer", "registry_for", "serve"]
