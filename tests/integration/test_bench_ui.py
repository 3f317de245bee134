"""benches/bench_ui.py still measures what it says, at a test's scale, on SQLite and PostgreSQL: the job page it
times answers 200 with its plots (the bench checks each answer), from the trace it stored, with the charts and
points each workload should give."""

from __future__ import annotations

import argparse
import sys

from support import paths

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_ui  # noqa: E402


def test_bench_ui_times_the_job_page_with_its_plots(db_url, tmp_path, capsys):
    args = argparse.Namespace(others=50, lines=400, repeat=2, workloads=list(bench_ui.WORKLOADS))
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    res = bench_ui.bench_backend(backend, db_url, tmp_path, args)
    day, dense = res["workloads"]["day"], res["workloads"]["dense"]
    for m in (day, dense):
        assert m["trace_lines"] == args.lines
        for part in ("http", "queries", "plots", "svg", "server"):
            assert m[part]["n"] == args.repeat and 0 < m[part]["p50_ms"] <= m[part]["max_ms"], (part, m[part])
        # The server's own time (its Server-Timing header) is part of what the client waited for.
        assert m["server"]["p50_ms"] < m["http"]["max_ms"], m
        assert m["page_bytes"] > m["svg_bytes"] > 0
    # day: 199 samples; CPU, memory (3 series), virtual, disk, I/O.
    assert day["charts"] == 5
    # dense: every line a sample; GPU use and memory besides, one series per GPU.
    assert dense["charts"] == 7
    samples = (args.lines - 2) // 2  # the procfmt and the final state line besides
    per_sample = 5 + 2 * bench_ui.GPUS  # RSS, PSS+swap, RSS peak, virtual, disk; each GPU's use and memory
    per_delta = 1 + 2  # CPU, read and write rates
    assert dense["points"] == samples * per_sample + (samples - 1) * per_delta
    bench_ui.report([res], (0.0, 0.0, 0.0))
    assert "GET /ui/jobs/{id}" in capsys.readouterr().out
