"""A payload for the spy tests (test_pilot_spy.py): `lines SECONDS` prints `out N` on stdout and `err N` on stderr,
one pair every SECONDS, flushed, for ever (the test kills it); `hostile TARGET` first replaces its stdout file in the
work directory (its current directory) by a symbolic link to TARGET and its stderr file by a FIFO, as a payload
trying to make its pilot show another file or block on a read would, then prints as `lines` does."""

from __future__ import annotations

import itertools
import os
import sys
import time


def main(argv: list) -> int:
    mode = argv[1]
    if mode == "hostile":
        for name in ("stdout", "stderr"):
            os.unlink(name)
        os.symlink(argv[2], "stdout")
        os.mkfifo("stderr")
        print("replaced", flush=True)
        interval = 0.2
    elif mode == "lines":
        interval = float(argv[2])
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    for n in itertools.count():
        print(f"out {n}", flush=True)
        print(f"err {n}", file=sys.stderr, flush=True)
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
