"""A job's resource plots over time, from its trace: the ALICE `proc` lines (pilot/monitor.py PROC_COLUMNS) and the
`usage` record the pilot sends right after each (USAGE_KEYS), with the job's limits as lines and its kill as a mark.

What a pilot sends is only bounded, not trusted: a line that does not parse, a value that is not a finite number
>= 0, a usage record that is not a JSON object is skipped (never an error page). Times are the pilot's own
(`reported_ts`) when they are within MAX_CLOCK_SKEW_S of central's, else central's (`ts`): the pilot's say when the
sample was taken, even for lines held back through an outage.

Runs: a job resubmitted after it ran has the records of each run in one trace, and each run's counters start again
from 0. A run begins at its `procfmt` line (sent once when the payload starts) or, without one, where RUNTIME goes
back. Only the latest run with samples is plotted, and the charts' titles say "run N of M" when there were several.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import orjson

from gridpilot.central.ui.charts import Chart, Limit, Mark, Point, Series
from gridpilot.errors import JdlError
from gridpilot.jdl import parse_job
from gridpilot.tracefmt import transition

#: A pilot's time further than this from central's is not believed (a wrong clock, or anything a pilot may send).
MAX_CLOCK_SKEW_S = 86400.0
#: The TTL is marked when its end is within this share of the run's length after the last sample.
TTL_MARK_REACH = 0.25
#: Ends of a job that a kill reason explains: the state line at which the kill is marked.
_KILLED_STATES = ("KILLED", "ERROR_")
#: The start of central's state lines (tracefmt.transition), which end with the new state's name.
_TRANSITION = transition("OLD", "NEW").split("OLD")[0]
#: The trace categories the plots read.
_PLOTTED = frozenset(("proc", "usage", "procfmt", "state"))
#: GPUs beyond this many are not drawn (a pilot may list up to bounds.MAX_GPUS, too many lines for one chart).
MAX_GPU_SERIES = 16


@dataclass
class Sample:
    """One `proc` line and the `usage` record that came with it."""

    at: float
    runtime_s: float
    cpu_s: float
    rss_bytes: float
    vmem_bytes: float
    #: The largest RSS since the job started (RMEMMAX): shows a peak that came and went between two samples.
    rss_max_bytes: float
    usage: Dict[str, Any] = field(default_factory=dict)
    paired: bool = False


@dataclass
class Run:
    samples: List[Sample] = field(default_factory=list)
    #: (time, state) of the state lines seen during the run.
    states: List[Tuple[float, str]] = field(default_factory=list)


#: The largest value taken (a pilot's counters are at most 2^63-1; anything larger is not a measurement).
MAX_VALUE = 1e30
_NUMBERS = (int, float)


def _number(v: Any) -> Optional[float]:
    """A number from 0 to MAX_VALUE, else None: not NaN or infinite, and not a bool (whose type is not int's)."""
    return v if type(v) in _NUMBERS and 0 <= v <= MAX_VALUE else None


def _time(line: Dict[str, Any]) -> Optional[float]:
    ts = _number(line.get("ts"))
    reported = _number(line.get("reported_ts"))
    if reported is not None and ts is not None and abs(reported - ts) <= MAX_CLOCK_SKEW_S:
        return reported
    return ts


#: A `proc` line's values (pilot/monitor.py PROC_COLUMNS: central may not import the pilot, so the layout is
#: repeated here and tests/unit/test_ui_plot_series.py checks it against the pilot's), and where the ones a plot
#: needs are: RUNTIME, CPUTIME, RMEM, VMEM, RMEMMAX (by index: this runs per sample).
PROC_WIDTH = 14
PROC_INDEXES = {"RUNTIME": 1, "CPUTIME": 4, "RMEM": 5, "VMEM": 6, "RMEMMAX": 11}
_COLUMNS = tuple(PROC_INDEXES.values())
#: RMEM, VMEM and RMEMMAX are in MB (pilot/monitor.py MB).
MB = 1 << 20
#: The memory rule's margin over MemorySize (pilot/rules.py MEMORY_MARGIN, the same number).
MEMORY_MARGIN = 1.2


def _proc(text: Any, at: float) -> Optional[Sample]:
    if not isinstance(text, str):
        return None
    values = text.split()
    if len(values) != PROC_WIDTH:
        return None
    try:
        runtime, cpu, rmem, vmem, rmax = (float(values[i]) for i in _COLUMNS)
    except ValueError:
        return None
    if not (0 <= runtime <= MAX_VALUE and 0 <= cpu <= MAX_VALUE and 0 <= rmem <= MAX_VALUE
            and 0 <= vmem <= MAX_VALUE and 0 <= rmax <= MAX_VALUE):  # NaN fails every comparison
        return None
    return Sample(at, runtime, cpu, rmem * MB, vmem * MB, rmax * MB)


def _usage(text: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(text, str):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def runs_of(trace: List[Dict[str, Any]]) -> List[Run]:
    """The trace's runs, in order, each with its samples (usage paired with the proc line before it)."""
    runs = [Run()]
    for line in trace:
        cat, text = line.get("category"), line.get("text")
        if cat not in _PLOTTED:
            continue  # most of a trace: no time to check
        at = _time(line)
        if at is None:
            continue
        if cat == "procfmt":
            if runs[-1].samples:
                runs.append(Run())
        elif cat == "proc":
            s = _proc(text, at)
            if s is None:
                continue
            if runs[-1].samples and s.runtime_s < runs[-1].samples[-1].runtime_s:
                runs.append(Run())  # RUNTIME went back: a new run whose procfmt line is missing
            runs[-1].samples.append(s)
        elif cat == "usage":
            usage = _usage(text)
            last = runs[-1].samples[-1] if runs[-1].samples else None
            if usage is not None and last is not None and not last.paired:
                last.usage, last.paired = usage, True
        elif cat == "state" and isinstance(text, str) and text.startswith(_TRANSITION):
            runs[-1].states.append((at, text.rsplit(" ", 1)[-1]))
    return runs


@dataclass(frozen=True)
class JobLimits:
    cores: int
    memory_kill_bytes: Optional[float]
    disk_bytes: Optional[float]
    ttl_s: Optional[float]


def limits_of(job: Dict[str, Any]) -> JobLimits:
    """The limits the pilot enforces (pilot/rules.py Limits.from_job), from the job's JDL as central stored it."""
    given: Any = job.get("cores")
    cores: int = given if isinstance(given, int) and given > 0 else 1
    ttl = _number(job.get("ttl"))
    try:
        jd = parse_job(str(job.get("jdl") or ""))
    except JdlError:
        return JobLimits(cores, None, None, ttl)
    return JobLimits(cores, jd.memory_size * MEMORY_MARGIN, float(jd.work_directory_size), ttl)


def _kill_mark(job: Dict[str, Any], run: Run, fallback: float) -> Optional[Mark]:
    reason = job.get("kill_reason")
    if not reason or reason == "OK":
        return None
    ends = [at for at, state in run.states if state.startswith(_KILLED_STATES)]
    return Mark(f"killed: {reason}", ends[-1] if ends else fallback)


def _rates(samples: List[Sample], value: Any) -> List[Point]:
    """Per-second rates of a counter between consecutive samples (over the pilot's RUNTIME, not the arrival times);
    a counter that went back (a pilot sending anything) gives no point."""
    out: List[Point] = []
    prev: Optional[Tuple[float, float]] = None
    for s in samples:
        v = value(s)
        if v is None:
            continue
        if prev is not None:
            dt, dv = s.runtime_s - prev[0], v - prev[1]
            if dt > 0 and dv >= 0:
                out.append((s.at, dv / dt))
        prev = (s.runtime_s, v)
    return out


def _field(s: Sample, key: str) -> Optional[float]:
    return _number(s.usage.get(key))


def _gpus(samples: List[Sample]) -> Tuple[Dict[str, List[Point]], Dict[str, List[Point]]]:
    util: Dict[str, List[Point]] = {}
    memory: Dict[str, List[Point]] = {}
    seen: Set[str] = set()
    for s in samples:
        gpus = s.usage.get("gpus")
        if not isinstance(gpus, list):
            continue
        for i, g in enumerate(gpus):
            if not isinstance(g, dict):
                continue
            address: Any = g.get("pci_address")
            name: str = address if isinstance(address, str) else f"GPU {i}"
            if name not in seen:
                if len(seen) >= MAX_GPU_SERIES:
                    continue
                seen.add(name)
            u: Any = g.get("util_percent")
            if type(u) in _NUMBERS and 0 <= u <= 100:
                util.setdefault(name, []).append((s.at, u))
            m: Any = g.get("job_memory_bytes")
            if m is None:
                m = g.get("memory_used_bytes")
            if type(m) in _NUMBERS and 0 <= m <= MAX_VALUE:
                memory.setdefault(name, []).append((s.at, m))
    return util, memory


def job_plots(job: Dict[str, Any], trace: List[Dict[str, Any]]) -> List[Chart]:
    """The charts of the job's latest run with samples: CPU, memory, virtual memory, disk, I/O and, when sampled,
    GPU use and memory. One "no samples" chart when the trace has none."""
    runs = [r for r in runs_of(trace) if r.samples]
    if not runs:
        return [Chart("Resource use", "")]
    run = runs[-1]
    samples = run.samples
    suffix = f" (run {len(runs)} of {len(runs)})" if len(runs) > 1 else ""
    lim = limits_of(job)
    marks: List[Mark] = []
    kill = _kill_mark(job, run, samples[-1].at)
    if kill is not None:
        marks.append(kill)
    if lim.ttl_s is not None:
        start = samples[0].at - samples[0].runtime_s
        end = start + lim.ttl_s
        length = max(samples[-1].at - start, 1.0)
        if end <= samples[-1].at + TTL_MARK_REACH * length or job.get("kill_reason") == "TTL":
            marks.append(Mark(f"TTL {lim.ttl_s:.0f} s", end))

    def chart(title: str, unit: str, series: List[Series], limits: Optional[List[Limit]] = None) -> Chart:
        return Chart(title + suffix, unit, series, limits or [], list(marks))

    cpu = _rates(samples, lambda s: s.cpu_s)
    charts = [
        chart("CPU", "percent", [Series("CPU (% of one core)", [(t, 100.0 * v) for t, v in cpu])],
              [Limit(f"{lim.cores} core{'s' if lim.cores > 1 else ''}", 100.0 * lim.cores)]),
        chart("Memory", "bytes",
              [Series("RSS", [(s.at, s.rss_bytes) for s in samples]),
               Series("PSS+swap", [(s.at, v) for s in samples if (v := _field(s, "pss_swap_bytes")) is not None]),
               Series("RSS peak so far", [(s.at, s.rss_max_bytes) for s in samples])],
              [] if lim.memory_kill_bytes is None else
              [Limit(f"kill at {MEMORY_MARGIN:g} x MemorySize (cgroup charge, else PSS+swap)", lim.memory_kill_bytes)]),
        chart("Virtual memory", "bytes", [Series("virtual", [(s.at, s.vmem_bytes) for s in samples])]),
        chart("Disk (work directory)", "bytes",
              [Series("work directory", [(s.at, v) for s in samples if (v := _field(s, "disk_bytes")) is not None])],
              [] if lim.disk_bytes is None else [Limit("WorkDirectorySize", lim.disk_bytes)]),
    ]
    io = [Series("read", _rates(samples, lambda s: _field(s, "read_bytes"))),
          Series("write", _rates(samples, lambda s: _field(s, "write_bytes")))]
    net = [Series("network in", _rates(samples, lambda s: _field(s, "net_rx_bytes"))),
           Series("network out", _rates(samples, lambda s: _field(s, "net_tx_bytes")))]
    charts.append(chart("I/O", "bytes/s", io + [s for s in net if s.points]))
    util, memory = _gpus(samples)
    if util:
        charts.append(chart("GPU use", "percent", [Series(n, p) for n, p in util.items()], [Limit("100 %", 100.0)]))
    if memory:
        charts.append(chart("GPU memory", "bytes", [Series(n, p) for n, p in memory.items()]))
    return charts


__all__ = ["JobLimits", "MAX_CLOCK_SKEW_S", "Run", "Sample", "job_plots", "limits_of", "runs_of"]
