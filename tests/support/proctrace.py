"""Trace entries as a JobAgent sends them while its job runs: the `procfmt` line once, then a `proc` line and its
`usage` record per sample (pilot/monitor.py format_proc_line, USAGE_KEYS). For the plot tests and benches/bench_ui.py."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import orjson

from gridpilot.pilot.monitor import PROCFMT, format_proc_line

MB = 1 << 20


def sample_entries(at: float, runtime_s: float, cpu_s: float, rss_mb: float, vmem_mb: float, cores: int = 1,
                   key: Optional[str] = None, rss_max_mb: Optional[float] = None, **usage: Any) -> List[Dict[str, Any]]:
    """One sample: its `proc` line (dated `at`, the pilot's clock) and its `usage` record. RMEMMAX is `rss_max_mb`,
    else `rss_mb`."""
    proc = format_proc_line(wall_s=runtime_s, cpu_s=cpu_s, rss_bytes=int(rss_mb * MB), vmem_bytes=int(vmem_mb * MB),
                            node_memory_bytes=64 << 30, cores=cores, cpu_family="6", cpu_mhz=2400.0,
                            rss_max_bytes=int((rss_max_mb or rss_mb) * MB), vmem_max_bytes=int(vmem_mb * MB))
    out = [{"ts": at, "category": "proc", "text": proc}, {"ts": at, "category": "usage", "text": orjson.dumps(usage).decode()}]
    if key is not None:
        out[0]["key"], out[1]["key"] = f"{key}.p", f"{key}.u"
    return out


def procfmt_entry(at: float) -> Dict[str, Any]:
    return {"ts": at, "category": "procfmt", "text": PROCFMT}


def run_entries(start: float, count: int, interval: float, cores: int = 1,
                usage: Optional[Callable[[int], Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """A whole run of `count` samples `interval` seconds apart from `start`: the payload busy on all its cores, memory
    growing and falling, I/O at a steady rate, the work directory growing."""
    out = [procfmt_entry(start)]
    for i in range(count):
        t = i * interval
        more = usage(i) if usage is not None else {
            "nprocs": 3, "nthreads": 7, "read_bytes": int(t * 1_000_000), "write_bytes": int(t * 250_000),
            "io_source": "cgroup io.stat", "rchar_bytes": int(t * 2_000_000), "wchar_bytes": int(t * 300_000),
            "pss_swap_bytes": (500 + i % 200) * MB, "disk_bytes": (100 + i) * MB}
        out += sample_entries(start + t, t, t * cores * 0.9, 400 + i % 250, 2000 + i % 100, cores, **more)
    return out


__all__ = ["MB", "procfmt_entry", "run_entries", "sample_entries"]
