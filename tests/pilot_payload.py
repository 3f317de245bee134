"""Purpose-built payloads for the pilot's integration tests: `python pilot_payload.py MODE [ARG]`.

Each mode breaks one rule of the pilot (or behaves in one way the pilot must handle), then waits, so the test sees the
pilot end it rather than the payload ending on its own. Runs in the job's work directory, as the JobWrapper starts it.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def hold(seconds: float) -> None:
    """Wait without using CPU (the idle rule's case, and every mode's 'now wait to be killed')."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def main(argv: list) -> int:
    mode = argv[1]
    arg = float(argv[2]) if len(argv) > 2 else 0.0
    print(f"payload {mode} {arg} pid {os.getpid()} job {os.environ.get('ALIEN_PROC_ID')}", flush=True)
    if mode == "sleep":
        hold(arg)
    elif mode == "hog":
        # Resident memory, really touched: bytes * n writes every page (a calloc'd bytearray would stay unbacked).
        block = b"x" * (int(arg) << 20)
        print(f"holding {len(block) >> 20} MB", flush=True)
        hold(120)
    elif mode == "fill":
        with open("filler.dat", "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(int(arg)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        hold(120)
    elif mode == "core":
        # What a crashing process leaves (the kernel's core_pattern "core.%p"); then carry on for `arg` seconds.
        with open(f"core.{os.getpid()}", "wb") as f:
            f.write(b"\x7fELF" + b"\0" * 4096)
        hold(arg)
    elif mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        hold(arg)
    elif mode == "daemon":
        # Leaves two processes behind and exits 0 at once: one stays in the payload's session, the other
        # double-forks into a session of its own, out of reach of anything that follows sessions or the tree.
        if os.fork() == 0:
            hold(arg)
            os._exit(0)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                hold(arg)
            os._exit(0)
        os.wait()
    elif mode == "echo":
        print("no output file written", flush=True)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
