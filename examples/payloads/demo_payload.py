#!/usr/bin/env python3
"""A small payload for the demo: a parent with two workers that compute, write output and exit on their own."""

import hashlib
import os
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
workdir = sys.argv[2] if len(sys.argv) > 2 else "."


def work(n: int) -> None:
    end = time.time() + seconds
    h = hashlib.sha256()
    block = bytearray(8 << 20)  # 8 MiB each, so memory shows in the samples
    while time.time() < end:
        h.update(block[: 1 << 20])
        block[n] = (block[n] + 1) % 256
    with open(os.path.join(workdir, f"worker{n}.out"), "w") as f:
        f.write(h.hexdigest() + "\n")


children = []
for n in range(2):
    pid = os.fork()
    if pid == 0:
        work(n)
        os._exit(0)
    children.append(pid)
status = 0
for pid in children:
    _, st = os.waitpid(pid, 0)
    status |= os.waitstatus_to_exitcode(st)
sys.exit(status)
