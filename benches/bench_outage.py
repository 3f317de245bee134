"""Central SIGKILLed under load (`make bench`, or by hand): how long the CE and the pilots take to resume, and what
was lost.

The scenario of tests/integration/test_central_kill.py (tests/support/outage.py), every piece a real process: `gridpilot
central serve` on SQLite, `gridpilot ce` with the local backend and the pilots it forks, seven jobs running (two short
ones, one failing and one writing an output file that end during the outage, one its TTL kills during it, one that runs
on past it, one its user killed just before it), central SIGKILLed and down --outage seconds, then started again on the
same database and port, and one more job submitted.

  CE resume        from central answering again to the CE's first cycle that reached it (its pilot-count report,
                   the last call of a cycle, newer than the restart in central's database)
  pilot resume     per pilot alive through the outage: from central answering again to that pilot's first answered
                   call (its agent's "central was unreachable" line, written when central first answers it, or its
                   runner's answered match), from the pilot's log
  pilots lost      runners that died during the outage, and pilots whose exit code was not 0
  wrong states     jobs that did not end as expected (DONE, exit 7, TTL, KILLED)
  outputs          the output written during the outage, not registered once when central is back
  trace lines      keyed lines in the traces; duplicated and lost ones against what each agent logged

Prints a table; `--json` one line of the numbers. Exit status 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.outage import OUTAGE_S, Scenario, machine_load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outage", type=float, default=OUTAGE_S, help=f"seconds central stays down (default {OUTAGE_S:g})")
    ap.add_argument("--json", action="store_true", help="print one JSON line of the numbers")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (logs, pilot outputs, database)")
    args = ap.parse_args()

    load_before = machine_load()
    base = Path(tempfile.mkdtemp(prefix="gridpilot-bench-outage-"))

    def say(s: str) -> None:
        print(f"  {s}", file=sys.stderr, flush=True)

    sc = Scenario(base / "run", outage_s=args.outage, say=say)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        o = sc.run()
    finally:
        sc.close()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"  kept {base}", file=sys.stderr)
    resumes = [s for s in o.pilot_resume_s.values() if s is not None]
    numbers = {
        "date": started,
        "load_before": load_before,
        "load_after": machine_load(),
        "outage_s": round(o.back_at - o.killed_at, 2),
        "ce_alive": o.ce_alive_at_end and not any(d.startswith("CE") for d in o.died_in_outage),
        "ce_resume_s": None if o.ce_resume_s is None else round(o.ce_resume_s, 2),
        "pilots_through_outage": o.runners_at_kill,
        "pilot_resume_s": {k: (None if v is None else round(v, 2)) for k, v in sorted(o.pilot_resume_s.items())},
        "pilot_resume_median_s": round(statistics.median(resumes), 2) if resumes else None,
        "pilot_resume_max_s": round(max(resumes), 2) if resumes else None,
        "pilots_lost": len(o.pilots_lost),
        "jobs_wrong_state": len(o.wrong_states),
        "outputs_lost": len(o.lost_outputs),
        "trace_lines": o.trace_lines,
        "trace_lines_duplicated": o.duplicated_lines,
        "trace_lines_lost": o.lost_lines,
    }
    if args.json:
        print(orjson.dumps(numbers).decode())
    else:
        print(f"central SIGKILLed under load, {started}; {load_before}")
        print(f"  {'central down':<28} {numbers['outage_s']:>8.2f} s")
        ce = "CE died" if numbers["ce_resume_s"] is None else f"{numbers['ce_resume_s']:>8.2f} s"
        print(f"  {'CE resume (first cycle)':<28} {ce}")
        for name, v in numbers["pilot_resume_s"].items():
            print(f"  {'pilot ' + name:<28} {'-' if v is None else f'{v:8.2f} s'}")
        print(f"  {'pilots lost':<28} {numbers['pilots_lost']:>8} (of {o.runners_at_kill} through the outage)")
        print(f"  {'jobs in a wrong state':<28} {numbers['jobs_wrong_state']:>8} (of {len(o.jobs)})")
        print(f"  {'outputs not registered once':<28} {numbers['outputs_lost']:>8}")
        print(f"  {'trace lines dup./lost':<28} {o.duplicated_lines:>4} / {o.lost_lines} (of {o.trace_lines})")
    for line in sorted(set(o.died_in_outage + o.pilots_lost)) + o.wrong_states + o.lost_outputs + o.trace_problems:
        print(f"  ! {line}", file=sys.stderr)
    lost = (numbers["pilots_lost"] or numbers["jobs_wrong_state"] or numbers["outputs_lost"] or o.duplicated_lines
            or o.lost_lines)
    return 1 if lost or not numbers["ce_alive"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
