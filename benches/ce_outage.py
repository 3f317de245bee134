"""How fast `gridpilot ce` resumes after a central outage (docs/outages.md).

A real central (EmbeddedCentral) and `gridpilot ce` as a process of its own with its default cycle and backoff
(cycle 60 s, backoff up to central_backoff_max, local backend). After the CE's first cycle central is stopped; once the CE has logged the outage it stays
down --down seconds more, then serves again on the same port. Printed per run: seconds from central answering again
to the CE's "answers again" line and to its next full cycle, the cycles it ran without central, and its log lines.

    .venv/bin/python benches/ce_outage.py --down 30 --runs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.ce import CEProcess, ce_grid  # noqa: E402


def one_run(base: Path, down_s: float) -> str:
    with ce_grid(base / "grid") as grid:
        conf = grid.ce_yaml(base / "ce.yaml", cycle_interval=60.0, log_level="INFO")
        with CEProcess(conf, base) as ce:
            ce.wait("the first cycle", lambda: "pilots:" in ce.out, timeout=120)
            grid.central.stop()
            ce.wait_err(r"unreachable \(", timeout=180)
            time.sleep(down_s)
            grid.central.start()
            up = time.monotonic()
            ce.wait_err("answers again", timeout=180)
            back = time.monotonic() - up

            def cycled() -> bool:
                lines = [line for line in ce.out.splitlines() if "pilots:" in line]
                return bool(lines) and "nothing probed" not in lines[-1]

            ce.wait("a full cycle", cycled, timeout=180)
            cycle = time.monotonic() - up
            without = sum("nothing probed" in line for line in ce.out.splitlines())
            lines = (ce.count(r"unreachable \("), ce.count("still unreachable"), ce.count("answers again"))
            assert ce.stop() == 0, ce.err
    return (f"down {down_s:.0f} s: 'answers again' {back:.1f} s and a full cycle {cycle:.1f} s after central's "
            f"return; {without} cycle(s) without central; log lines {lines[0]} down, {lines[1]} still down, "
            f"{lines[2]} back")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--down", type=float, default=30.0, help="seconds central stays down after the CE saw it go")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="gridpilot-ce-outage-") as tmp:
            print(one_run(Path(tmp), args.down), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
