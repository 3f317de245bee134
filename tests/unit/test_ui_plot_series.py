"""A job's resource plots from its trace (central/ui/plots.py), without a server: what each chart's points are, the
limits and marks, runs, and records a pilot may send that are not what it should."""

from __future__ import annotations

import json

from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.proctrace import MB, procfmt_entry, sample_entries

from gridpilot.central.ui.charts import render
from gridpilot.central.ui.plots import job_plots
from gridpilot.pilot.monitor import PROC_COLUMNS
from gridpilot.pilot.rules import MEMORY_MARGIN

T0 = 1_800_000_000.0
JDL = 'Executable = "/bin/true";\nCPUCores = 2;\nMemorySize = "2GB";\nWorkDirectorySize = "5GB";\nTTL = 3600;\n'


def job(**over: Any) -> Dict[str, Any]:
    j = {"id": 1, "cores": 2, "ttl": 3600, "jdl": JDL, "kill_reason": None, "state": "RUNNING"}
    j.update(over)
    return j


def lines(*entries: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Entries as read_trace returns them: central's ts, the pilot's as reported_ts."""
    return [{"id": i, "ts": e["ts"] + 1.0, "reported_ts": e.get("ts"), "category": e["category"], "text": e["text"],
             "key": None} for i, e in enumerate(entries)]


def state(at: float, old: str, new: str) -> Dict[str, Any]:
    return {"ts": at, "category": "state", "text": f"Job state transition from {old} to {new}"}


def by_title(charts):
    return {c.title: c for c in charts}


def points(chart, name):
    (s,) = [s for s in chart.series if s.name == name]
    return list(s.points)


TRACE = lines(
    procfmt_entry(T0),
    *sample_entries(T0, 0, 0, 100, 1000, 2, read_bytes=0, write_bytes=0, pss_swap_bytes=90 * MB, disk_bytes=1 * MB),
    *sample_entries(T0 + 600, 600, 900, 300, 1500, 2, rss_max_mb=700, read_bytes=60_000_000, write_bytes=6_000_000,
                    pss_swap_bytes=280 * MB, disk_bytes=50 * MB),
    *sample_entries(T0 + 1200, 1200, 2100, 500, 1600, 2, rss_max_mb=700, read_bytes=60_000_000, write_bytes=18_000_000,
                    pss_swap_bytes=480 * MB, disk_bytes=80 * MB,
                    gpus=[{"pci_address": "0000:01:00.0", "util_percent": 55.0, "job_memory_bytes": 3 * MB}]),
)


def test_points_are_derived_from_the_counters():
    charts = by_title(job_plots(job(), TRACE))
    assert list(charts) == ["CPU", "Memory", "Virtual memory", "Disk (work directory)", "I/O", "GPU use", "GPU memory"]
    # CPU: CPUTIME deltas over RUNTIME deltas, in % of one core, at the pilot's times.
    assert points(charts["CPU"], "CPU (% of one core)") == [(T0 + 600, 150.0), (T0 + 1200, 200.0)]
    assert [(lim.name, lim.value) for lim in charts["CPU"].limits] == [("2 cores", 200.0)]
    assert points(charts["Memory"], "RSS") == [(T0, 100 * MB), (T0 + 600, 300 * MB), (T0 + 1200, 500 * MB)]
    assert points(charts["Memory"], "PSS+swap") == [(T0, 90 * MB), (T0 + 600, 280 * MB), (T0 + 1200, 480 * MB)]
    # A peak between two samples (700 MB) shows in the peak so far.
    assert points(charts["Memory"], "RSS peak so far") == [(T0, 100 * MB), (T0 + 600, 700 * MB), (T0 + 1200, 700 * MB)]
    (mem_limit,) = charts["Memory"].limits
    assert mem_limit.value == pytest.approx(2 * (1 << 30) * MEMORY_MARGIN) and "PSS+swap" in mem_limit.name
    assert points(charts["Virtual memory"], "virtual")[-1] == (T0 + 1200, 1600 * MB)
    assert points(charts["Disk (work directory)"], "work directory")[1] == (T0 + 600, 50 * MB)
    assert [lim.value for lim in charts["Disk (work directory)"].limits] == [5 * (1 << 30)]
    assert points(charts["I/O"], "read") == [(T0 + 600, 100_000.0), (T0 + 1200, 0.0)]
    assert points(charts["I/O"], "write") == [(T0 + 600, 10_000.0), (T0 + 1200, 20_000.0)]
    assert points(charts["GPU use"], "0000:01:00.0") == [(T0 + 1200, 55.0)]
    assert points(charts["GPU memory"], "0000:01:00.0") == [(T0 + 1200, 3 * MB)]
    # A running job far from its TTL: no mark stretches the time axis.
    assert all(c.marks == [] for c in charts.values())


def test_a_killed_job_is_marked_on_every_chart_at_its_state_line():
    trace = TRACE + lines(state(T0 + 1300, "RUNNING", "ERROR_E"))
    charts = job_plots(job(kill_reason="MEMORY_USAGE", state="ERROR_E"), trace)
    assert len(charts) == 7
    for c in charts:
        assert [(m.name, m.at) for m in c.marks] == [("killed: MEMORY_USAGE", T0 + 1300)]
        assert "killed: MEMORY_USAGE" in str(render(c))


def test_the_pilots_proc_layout_and_memory_margin_are_the_plots():
    from gridpilot.central.ui import plots
    from gridpilot.pilot import monitor, rules

    assert plots.PROC_WIDTH == len(PROC_COLUMNS)
    assert {k: PROC_COLUMNS.index(k) for k in plots.PROC_INDEXES} == plots.PROC_INDEXES
    assert plots.MB == monitor.MB and plots.MEMORY_MARGIN == rules.MEMORY_MARGIN


def test_the_ttl_is_marked_when_the_run_reaches_it():
    charts = job_plots(job(ttl=1300, kill_reason="TTL"), TRACE + lines(state(T0 + 1301, "RUNNING", "ERROR_E")))
    assert [(m.name, m.at) for m in charts[0].marks] == [("killed: TTL", T0 + 1301), ("TTL 1300 s", T0 + 1300)]


def test_no_samples():
    (c,) = job_plots(job(), lines(procfmt_entry(T0), state(T0, "STARTED", "RUNNING")))
    assert "no samples" in str(render(c))
    (c,) = job_plots(job(kill_reason="KILLED"), [])
    assert "no samples" in str(render(c))


def test_only_the_latest_run_is_plotted():
    second = lines(state(T0 + 2000, "ERROR_E", "WAITING"), procfmt_entry(T0 + 3000),
                   *sample_entries(T0 + 3000, 0, 0, 10, 20, 2), *sample_entries(T0 + 3060, 60, 30, 11, 21, 2))
    charts = job_plots(job(), TRACE + second)
    assert charts[0].title == "CPU (run 2 of 2)"
    assert points(charts[0], "CPU (% of one core)") == [(T0 + 3060, 50.0)]
    assert [x for x, _ in points(charts[1], "RSS")] == [T0 + 3000, T0 + 3060]
    # Without the procfmt line, RUNTIME going back starts the run.
    no_fmt = [e for e in TRACE + second if e["category"] != "procfmt"]
    assert job_plots(job(), no_fmt)[0].title == "CPU (run 2 of 2)"


def with_column(text: str, column: str, value: str) -> str:
    values = text.split(" ")
    values[PROC_COLUMNS.index(column)] = value
    return " ".join(values)


def test_malformed_records_are_skipped():
    bad = [
        {"ts": T0 + 10, "category": "proc", "text": "not a proc line"},
        {"ts": T0 + 11, "category": "proc", "text": " ".join(["x"] * 14)},
        {"ts": T0 + 12, "category": "proc", "text": with_column(TRACE[1]["text"], "CPUTIME", "nan")},
        {"ts": T0 + 12, "category": "proc", "text": with_column(TRACE[1]["text"], "RMEM", "-1")},
        {"ts": T0 + 12, "category": "proc", "text": with_column(TRACE[1]["text"], "RUNTIME", "1e999")},
        {"ts": T0 + 13, "category": "usage", "text": "[1, 2]"},
        {"ts": T0 + 14, "category": "usage", "text": "{not json"},
        {"ts": T0 + 15, "category": "usage", "text": '{"pss_swap_bytes": -5, "disk_bytes": "a lot", "gpus": 7}'},
        {"ts": T0 + 16, "category": "usage", "text": '{"gpus": [1, {"util_percent": 500}, {"util_percent": true}]}'},
        {"ts": T0 + 17, "category": "state", "text": "Job state transition from"},
    ]
    # A sample whose usage record has every field wrong: its proc line counts, its usage fields do not.
    odd = sample_entries(T0 + 300, 300, 450, 200, 1200, 2, pss_swap_bytes=-5, disk_bytes="a lot", read_bytes=True,
                         write_bytes=[1], gpus=[1, {"util_percent": 500}, {"util_percent": True}, "x"])
    trace = TRACE[:3] + lines(*bad, *odd) + TRACE[3:]
    trace.append({"id": 99, "ts": None, "category": "proc", "text": TRACE[1]["text"]})
    charts = by_title(job_plots(job(), trace))
    assert points(charts["CPU"], "CPU (% of one core)") == [(T0 + 300, 150.0), (T0 + 600, 150.0), (T0 + 1200, 200.0)]
    assert [x for x, _ in points(charts["Memory"], "PSS+swap")] == [T0, T0 + 600, T0 + 1200]
    assert [x for x, _ in points(charts["Memory"], "RSS")] == [T0, T0 + 300, T0 + 600, T0 + 1200]
    assert points(charts["I/O"], "read") == [(T0 + 600, 100_000.0), (T0 + 1200, 0.0)]
    assert points(charts["GPU use"], "0000:01:00.0") == [(T0 + 1200, 55.0)] and len(charts["GPU use"].series) == 1
    for c in charts.values():
        render(c)


def test_a_pilot_clock_far_from_centrals_is_not_believed():
    trace = lines(*sample_entries(T0, 0, 0, 1, 1), *sample_entries(T0 + 60, 60, 30, 1, 1))
    trace[2]["reported_ts"] = 1e300
    rss = points(by_title(job_plots(job(), trace))["Memory"], "RSS")
    assert rss == [(T0, MB), (T0 + 61, MB)]  # central's ts for the second


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["pss_swap_bytes", "disk_bytes", "read_bytes", "write_bytes", "net_rx_bytes", "gpus",
                         "util_percent", "job_memory_bytes", "memory_used_bytes", "pci_address", "x"]), inner,
        max_size=6),
    max_leaves=12)
_WORD = st.sampled_from(["0", "1", "-1", "nan", "inf", "1e999", "12.5", "00:01:02", "x", "<b>"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["proc", "usage", "procfmt", "state", "trace"]),
                          st.floats(allow_nan=True, allow_infinity=True) | st.none(),
                          st.floats(-1e12, 1e13) | st.none(),
                          st.lists(_WORD, min_size=13, max_size=15).map(" ".join) | _JSON.map(json.dumps) | st.text(max_size=30)),
                max_size=30),
       st.sampled_from([None, "OK", "TTL", "MEMORY_USAGE"]), st.integers(-3, 9) | st.none(), st.integers(-5, 10 ** 7))
def test_whatever_a_pilot_sends_the_plots_draw_or_skip(entries, kill, cores, ttl):
    trace = [{"id": i, "ts": ts, "reported_ts": rep, "category": cat, "text": text, "key": None}
             for i, (cat, rep, ts, text) in enumerate(entries)]
    for c in job_plots(job(cores=cores, ttl=ttl, kill_reason=kill), trace):
        html = str(render(c))
        assert "<svg" in html or "no samples" in html
