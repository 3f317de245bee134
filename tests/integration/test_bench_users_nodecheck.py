"""The benches behind docs/central-api.md's user figures and docs/node-check.md's probe times still measure what
they say, at a test's scale: benches/bench_users.py against a real `central serve` on SQLite and PostgreSQL (the
summary lists the running jobs with their newest human line, the control poll carries the spy request only once
one is made, each masterjob splits, is killed and resubmitted whole), and benches/bench_node_check.py on this
machine (the cold probe starts what the warm one reads from the per-boot cache, and the sections add up to the
whole)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import orjson

from support import paths

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_node_check  # noqa: E402
import bench_users  # noqa: E402


def test_bench_users_measures_summary_spy_and_masterjobs(db_url, tmp_path, capsys):
    args = argparse.Namespace(mine=300, running=30, lines=12, repeat=5, polls=20, subjobs=[40, 120])
    backend = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    # The bench asserts as it goes: the summary's totals and lines, the poll's spy command absent then present,
    # each masterjob's subjob count through submit, listing, kill and resubmission.
    res = bench_users.bench_backend(backend, db_url, tmp_path, args)
    for key in ("http_20", "http_100", "in_process_20", "in_process_100"):
        m = res["summary"][key]
        assert m["n"] == args.repeat and 0 < m["p50_ms"] <= m["max_ms"], (key, m)
    for label in ("without", "with"):
        for part in ("http", "in_process", "job_read", "spy_read"):
            m = res["spy"][f"{part}_{label}"]
            assert m["n"] == args.polls and 0 < m["p50_ms"] <= m["max_ms"], (part, label, m)
    assert sorted(res["masterjobs"]) == ["120", "40"]
    for m in res["masterjobs"].values():
        assert m["submit_s"] > 0 and m["kill_s"] > 0 and m["resubmit_s"] > 0 and m["subjobs_ids_ms"]["p50_ms"] > 0
    bench_users.report([res], (0.0, 0.0, 0.0))
    out = capsys.readouterr().out
    assert "GET /jobs/summary" in out and "spy read with a request" in out and "masterjobs" in out


def test_bench_node_check_cold_starts_what_warm_reads_from_the_cache(tmp_path, image_dir: Path, capsys):
    out_json = tmp_path / "nodecheck.json"
    assert bench_node_check.main(["--cold", "1", "--warm", "1", "--image", str(image_dir), "--json",
                                  str(out_json)]) == 0
    res = orjson.loads(out_json.read_bytes())
    assert res["cold"]["cache_hits"] == 0 and res["warm"]["cache_hits"] > 0
    for label in ("cold", "warm"):
        sections = res[label]["sections_s"]
        assert {"cpu_info", "describe", "os_release", "memory", "disk", "cgroups", "user_namespaces", "runtimes",
                "gpus", "cvmfs", "rest"} <= set(sections), sorted(sections)
        whole = sum(v["median"] for k, v in sections.items() if k not in bench_node_check.PARTS)
        # One round: each median is that round's value, so the sections and the rest make the total exactly.
        assert abs(whole - res[label]["total_s"]["median"]) < 1e-6, (label, whole, res[label]["total_s"])
        assert res[f"command_{label}"]["wall_s"]["median"] > res[f"command_{label}"]["probe_s"]["median"] > 0
    started = [n for n, r in res["node"]["runtimes"].items() if r.get("starts")]
    if started:
        # A container start is what the cache saves: tens of milliseconds at the least, against a file read.
        assert res["warm"]["sections_s"]["runtimes"]["median"] < res["cold"]["sections_s"]["runtimes"]["median"]
    else:
        assert not any(shutil.which(n) for n in ("podman", "bwrap")), res["node"]["runtimes"]
    assert "target: warm node check" in capsys.readouterr().out
