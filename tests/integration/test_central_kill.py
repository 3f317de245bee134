"""Central SIGKILLed for 30 s under a running CE, its pilots and their jobs (issue 14, item 2), every piece a real
process (tests/support/outage.py): the CE and every pilot ride the outage out, every job ends in its right state
(DONE, a failure's exit code, a TTL kill, a user's kill, a job submitted after the restart), the output a job wrote
during the outage is registered once it is over (issue 15), every trace line each agent wrote arrives exactly once,
and the CE's first cycle after central's return is measured.

A slow test, like tests/integration/test_pilot_outage.py: the outage is the issue's 30 s."""

from __future__ import annotations

from support.outage import OUTAGE_S, Scenario


def test_central_killed_for_30_s_under_load_loses_no_pilot_no_job_and_no_trace_line(tmp_path):
    sc = Scenario(tmp_path / "outage", outage_s=OUTAGE_S, say=print)
    try:
        o = sc.run()
        detail = sc.describe()
    finally:
        sc.close()
    assert not o.died_in_outage, "\n".join(o.died_in_outage) + "\n" + detail
    assert o.runners_at_kill >= 5, f"the load was not in place: {o.runners_at_kill} runners\n{detail}"
    assert o.ce_alive_at_end, detail
    assert not o.pilots_lost, "\n".join(o.pilots_lost) + "\n" + detail
    assert not o.wrong_states, "\n".join(o.wrong_states) + "\n" + detail
    assert not o.lost_outputs, "\n".join(o.lost_outputs) + "\n" + detail
    assert not o.trace_problems, "\n".join(o.trace_problems) + "\n" + detail
    assert o.trace_lines > 50, f"only {o.trace_lines} keyed trace lines: the agents' lines are not keyed?\n{detail}"
    # Every agent that held a job through the outage said so in its trace once central answered again.
    assert any("errorConnecting" in line for line in detail.splitlines()), detail
    assert o.ce_resume_s is not None and o.ce_resume_s >= 0, detail
    print(f"CE resumed {o.ce_resume_s:.2f} s after central returned; pilots' first answered call: "
          + ", ".join(f"{n} {'-' if s is None else f'{s:.2f} s'}" for n, s in sorted(o.pilot_resume_s.items())))
