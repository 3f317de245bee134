"""`gridpilot demo`: a whole grid on this machine. An embedded central service (SQLite in a temporary state
directory), a `file://` storage element, example jobs submitted, and a computing element with the local backend
submitting pilots for them (each with its own agent token minted through central, as at a site), live progress of
jobs and pilots, and a summary at the end.

(The grid itself is testing.LocalGrid, which the end-to-end tests and benches run their jobs on.)
"""

from __future__ import annotations

import math
import signal
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import orjson

from gridpilot import tracefmt
from gridpilot.ce.backend import FAILED, FINAL_STATES, FINISHED, HELD, QUEUED, RUNNING
from gridpilot.ce.command import describe
from gridpilot.ce.factory import CycleReport
from gridpilot.ce.script import SLOT_TTL_MARGIN_S
from gridpilot.central.broker import needs_of
from gridpilot.errors import JdlError
from gridpilot.jdl import JobDescription, String, load_document, write
from gridpilot.pilot.jobtrace import batch_id_of
from gridpilot.private_files import write_private
from gridpilot.testing import PILOT_MEMORY_PER_CORE_MB, SE_NAME, LocalGrid

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples" / "demo"
PAYLOADS = ROOT / "examples" / "payloads"
#: Where the demo puts local files a job names, in the catalogue.
DEMO_LFN_DIR = "/gridpilot/demo"
#: Wall time a demo pilot gets beyond its longest job's TTL (and the slot margin): a pilot this old can still
#: match the longest job, so late jobs need no new pilot.
PILOT_SPARE_WALL_S = 300


@dataclass
class DemoJob:
    name: str
    jdl: str
    expect_state: Optional[str] = None
    expect_reason: Optional[str] = None
    job_id: int = 0
    final: Dict[str, Any] = field(default_factory=dict)
    #: What the broker will ask of a pilot: cores, memory in MB (0: not given), TTL in seconds.
    cores: int = 1
    memory_mb: int = 0
    ttl: int = 0
    #: The batch job (`local:<pid>.<n>`) of the pilot that ran it, from its trace; None if no pilot matched it.
    batch_job: Optional[str] = None


def _prepare(grid: LocalGrid, path: Path) -> DemoJob:
    """Read a JDL; a local Executable is put in the catalogue first and the job points at it there, as a grid job
    names its executable by LFN. An absolute path to a program on every node (/bin/sh) stays as it is."""
    doc = load_document(path)
    exe_value = doc.get("Executable")
    exe = exe_value.value if isinstance(exe_value, String) else None
    if exe is not None:
        if exe.startswith(DEMO_LFN_DIR + "/"):
            grid.register_local_file(PAYLOADS / Path(exe).name, exe)
        elif not os.path.isabs(exe) and (path.parent / exe).is_file():
            lfn = f"{DEMO_LFN_DIR}/bin/{Path(exe).name}"
            grid.register_local_file(path.parent / exe, lfn)
            doc = doc.with_value("Executable", String(lfn))
    expect = doc.get("DemoExpect")
    reason = doc.get("DemoExpectKillReason")
    needs = needs_of(JobDescription.from_document(doc))
    return DemoJob(path.stem, write(doc), getattr(expect, "value", None), getattr(reason, "value", None),
                   cores=needs.cores, memory_mb=needs.memory_mb, ttl=needs.ttl)


def pilot_shapes(jobs: Sequence[DemoJob], cores: int = 0) -> List[Dict[str, int]]:
    """The CE's pilot shapes for these jobs: one per CPUCores among them (or every pilot `cores` cores), each with
    memory for the hungriest job per core and wall time for the longest TTL, so every job fits some pilot. The
    broker never gives a pilot a job larger than its slot, and the CE serves the smallest shapes first."""
    per_core = max([PILOT_MEMORY_PER_CORE_MB] + [math.ceil(j.memory_mb / j.cores) for j in jobs])
    wall = max([60] + [j.ttl for j in jobs]) + SLOT_TTL_MARGIN_S + PILOT_SPARE_WALL_S
    sizes = {cores} if cores else {j.cores for j in jobs} or {1}
    return [{"cores": c, "memory_mb": c * per_core, "wall_time": wall} for c in sorted(sizes)]


def _demo_inputs(grid: LocalGrid, workdir: Path) -> None:
    """The data file the analysis example reads."""
    data = workdir / "events.csv"
    data.write_text("".join(f"{i},{i * 0.5:.1f},{i % 7}\n" for i in range(1000)))
    grid.register_local_file(data, f"{DEMO_LFN_DIR}/data/events.csv")


def _pilots_line(r: Optional[CycleReport]) -> str:
    """The pilots as the CE's last cycle saw them in its batch system."""
    if r is None:
        return "pilots: none yet"
    c = r.counts
    held = f", {c[HELD]} held" if c.get(HELD) else ""
    return (f"pilots: {c.get(QUEUED, 0)} queued, {c.get(RUNNING, 0)} running{held}, "
            f"{c.get(FINISHED, 0) + c.get(FAILED, 0)} ended")


def _progress_line(jobs: List[Dict[str, Any]], t0: float, r: Optional[CycleReport] = None) -> str:
    counts: Dict[str, int] = {}
    for j in jobs:
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    return (f"[{time.monotonic() - t0:5.1f}s] " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            + f"; {_pilots_line(r)}")


def demo_max_pilots() -> int:
    """Pilots the demo's CE keeps in its batch system at once: one per CPU and one more (at least three), so a
    pilot spending its last seconds on empty matches does not hold the next job back, while a 2-core machine is
    not buried under Python start-ups."""
    return max(2, os.cpu_count() or 1) + 1


def _batch_job(grid: LocalGrid, job_id: int) -> Optional[str]:
    """The batch job of the pilot that ran it, from the agent's BatchId line."""
    for e in grid.user.trace(job_id):
        found = batch_id_of(e["text"])
        if found:
            return found
    return None


def _serve_until_stopped(out: Any) -> None:
    """`--serve`: keep central (and its web view) up after the jobs ended, until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("\nserving the web view until Ctrl-C", file=out, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(files: Sequence[str] = (), *, as_json: bool = False, timeout: float = 300.0, cores: int = 0,
             serve: bool = False) -> int:
    live = sys.stdout.isatty() and not as_json
    out = sys.stderr if as_json else sys.stdout
    paths = [Path(f) for f in files] or sorted(EXAMPLES.glob("*.jdl"))
    if not paths:
        # A wheel (`pip install .`) carries the package, not the repository's examples/.
        print(f"gridpilot demo: no example jobs in {EXAMPLES} (not part of this installation); "
              "give JDL files: gridpilot demo FILE.jdl ...", file=sys.stderr)
        return 2
    for p in paths:  # before anything starts: a bad file is one line, not a grid started and stopped
        try:
            load_document(p)
        except JdlError as e:
            print(f"gridpilot demo: {e.with_path(str(p)) if e.path is None else e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"gridpilot demo: {p}: cannot read: {e.strerror or e}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="gridpilot-demo-") as tmp, LocalGrid(Path(tmp)) as grid:
        print(f"central: {grid.central.url} (SQLite in {tmp}/central); storage: {SE_NAME} (file://{tmp}/se)", file=out)
        token_file = Path(tmp) / "user.token"
        write_private(token_file, grid.user_token + "\n")
        print(f"web view: {grid.central.url}/ui/ (sign in with the token in {token_file}"
              f"{'' if serve else '; --serve keeps it up after the jobs'})", file=out)
        _demo_inputs(grid, Path(tmp))
        jobs: List[DemoJob] = []
        for p in paths:
            try:
                job = _prepare(grid, p)
            except (JdlError, OSError) as e:
                print(f"{p}: {e}", file=sys.stderr)
                return 2
            job.job_id = grid.user.submit(job.jdl, name=p.name)
            jobs.append(job)
            print(f"submitted {p.name} as job {job.job_id}", file=out)
        n = demo_max_pilots()
        factory = grid.start_ce(shapes=pilot_shapes(jobs, cores), max_running=n, max_queued=n, per_cycle=n)
        print(describe(factory), file=out)
        print(f"  each pilot's start-up script, token file and output in {tmp}/pilots/<name>/", file=out)
        t0 = time.monotonic()
        last = [""]

        def tick(states: List[Dict[str, Any]]) -> None:
            line = _progress_line(states, t0, grid.ce_report)
            if live:
                lines = [line] + [f"  job {s['id']:>4} {jobs[i].name:<20} {s['state']}" for i, s in enumerate(states)]
                sys.stdout.write("\033[K" + "\n\033[K".join(lines) + f"\033[{len(lines) - 1}F\r")
                sys.stdout.flush()
            elif line.split("] ", 1)[1] != last[0]:
                print(line, file=out)
                last[0] = line.split("] ", 1)[1]

        final = grid.wait([j.job_id for j in jobs], timeout, tick)
        if live:
            sys.stdout.write("\n" * (len(jobs) + 1))
        print("CE stopped; waiting for its pilots to end (each leaves after its last empty match)", file=out)
        pilots = grid.stop_ce()
        left = sorted(b for b, st in pilots.items() if st not in FINAL_STATES)
        all_good = True
        print(f"\n{'job':>5}  {'example':<20} {'state':<10} {'kill reason':<13} {'expected':<10} {'batch job':<18} ok",
              file=out)
        for job, state in zip(jobs, final):
            job.final = state
            job.batch_job = _batch_job(grid, job.job_id)
            good = (job.expect_state is None or state["state"] == job.expect_state) and (
                job.expect_reason is None or state.get("kill_reason") == job.expect_reason)
            all_good &= good
            print(f"{job.job_id:>5}  {job.name:<20} {state['state']:<10} {str(state.get('kill_reason') or '-'):<13} "
                  f"{(job.expect_state or 'final'):<10} {job.batch_job or '-':<18} {'yes' if good else 'NO'}", file=out)
        show = next((j for j in jobs if j.final.get("state") == "DONE"), jobs[0] if jobs else None)
        if show is not None and not as_json:
            print(f"\ntrace of job {show.job_id} ({show.name}):", file=out)
            for ev in grid.user.trace(show.job_id):
                print(f"  {tracefmt.render(ev)}", file=out)
        if as_json:
            for job in jobs:
                sys.stdout.write(orjson.dumps({
                    "id": job.job_id, "name": job.name, "state": job.final.get("state"),
                    "kill_reason": job.final.get("kill_reason"), "exit_code": job.final.get("exit_code"),
                    "batch_job": job.batch_job,
                }).decode() + "\n")
        ended = {st: sum(1 for v in pilots.values() if v == st) for st in (FINISHED, FAILED)}
        names = ", ".join("local:" + b for b in sorted(pilots, key=lambda b: (len(b), b))) or "none"
        print(f"\nCE submitted {len(pilots)} pilot(s) ({names}): "
              f"{ended[FINISHED]} finished, {ended[FAILED]} failed, "
              + (f"{len(grid.pilots_removed)} of them removed by the CE, " if grid.pilots_removed else "")
              + (f"{len(left)} NOT ended ({', '.join(left)}); " if left else "none left running; ")
              + ("every job ended as expected" if all_good else "some jobs did NOT end as expected"), file=out)
        if serve:
            _serve_until_stopped(out)
        return 0 if all_good and not left else 1
