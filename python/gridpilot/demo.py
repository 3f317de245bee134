"""`gridpilot demo`: a payload run as the pilot will run it, sampled live, then its tree checked and cleaned up.

Until the central services and the JobAgent exist (issues 4 and 5), the demo shows the native hot path on a real
payload: its own session, fast-tier samples every half second, a slow-tier sample, and a safe terminate_tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridpilot import _native

PAYLOAD = Path(__file__).resolve().parent.parent.parent / "examples" / "payloads" / "demo_payload.py"


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _line(text: str, live: bool) -> None:
    if live:
        sys.stdout.write("\r\033[K" + text)
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_demo(seconds: float = 6.0) -> int:
    live = sys.stdout.isatty()
    if hasattr(_native, "cpu_info"):
        cpu = _native.cpu_info()
        gpus = _native.list_gpus()
        print(f"node: {cpu.arch}, {cpu.logical_cpus} CPUs, {cpu.model or 'unknown model'}, {len(gpus)} GPU(s)")
    if not PAYLOAD.exists():
        print(f"demo payload not found at {PAYLOAD} (run the demo from a source checkout)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gridpilot-demo-") as workdir:
        # The payload gets its own session, as the JobWrapper will give it: signals to it never reach us.
        proc = subprocess.Popen([sys.executable, str(PAYLOAD), str(seconds), workdir], start_new_session=True)
        sampler = _native.TreeSampler(proc.pid)
        print(f"payload started: pid {proc.pid}, work directory {workdir}")
        t0 = time.monotonic()
        peak_rss = 0
        samples = 0
        try:
            while proc.poll() is None:
                s = sampler.sample()
                samples += 1
                peak_rss = max(peak_rss, s.rss_bytes)
                wall = time.monotonic() - t0
                _line(
                    f"[{wall:5.1f}s] RUNNING  procs={s.nprocs} threads={s.nthreads} cpu={s.cpu_time_s:6.2f}s "
                    f"({s.cpu_time_s / max(wall, 1e-3) * 100:3.0f}%) rss={_mb(s.rss_bytes)}",
                    live,
                )
                if samples % 8 == 4:
                    full = sampler.sample_full()
                    if not live:
                        print(f"         slow tier: pss={_mb(full.pss_bytes or 0)} swap={_mb(full.swap_bytes or 0)}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            report = _native.terminate_tree(proc.pid, grace_s=5)
            print(f"\ninterrupted: payload terminated {report.to_dict()}")
            return 130
        finally:
            if proc.poll() is None:
                _native.terminate_tree(proc.pid, grace_s=5)
                proc.wait()
        if live:
            sys.stdout.write("\n")
        rc = proc.returncode
        outputs = sorted(p.name for p in Path(workdir).iterdir())
        leftovers = _native.terminate_tree(proc.pid, grace_s=1)
        state = "DONE" if rc == 0 and len(outputs) == 2 else "ERROR_E"
        print(f"payload exited with {rc}; outputs: {', '.join(outputs) or 'none'}; peak rss {_mb(peak_rss)}")
        print(f"leftover processes cleaned: {len(leftovers.killed) + len(leftovers.terminated)}")
        print(f"job state: {state} ({samples} samples)")
        return 0 if state == "DONE" else 1
