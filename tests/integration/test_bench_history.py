"""benches/bench_history.py at a small scale, on SQLite and PostgreSQL, so it cannot rot: it fills the history,
times the overview and a snapshot, and prints a line for each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benches" / "bench_history.py"


def test_the_history_bench_runs_small(db_url):
    r = subprocess.run([sys.executable, str(BENCH), "--hosts", "2", "--days", "0.1", "--interval", "60",
                        "--jobs", "50", "--repeats", "1", "--db", db_url],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "2 hosts x 144 snapshots" in out, out
    assert "overview, last 6 h" in out and "(288 snapshots)" in out and "its charts drawn" in out
    assert "snapshot (GROUP BY + insert)" in out and "last 168 h" not in out
