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


#: What a payload would raise, in an order the kernel accepts (v1 refuses a memory limit above memory+swap's).
LIMITS = (("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1"), ("memory.max", "max"),
          ("memory.high", "max"), ("pids.max", "max"), ("cpu.cfs_quota_us", "-1"), ("cpu.max", "max"))


def own_cgroup_dirs() -> list:
    """Every directory of this process's own cgroups (v2 and each v1 hierarchy) that a mount shows it."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers or "v2"] = path
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, root, point = fields[sep + 1], fields[3], fields[4]
            options = set(fields[sep + 3].split(","))
            for controllers, path in own.items():
                if fstype == "cgroup2" and controllers == "v2" or fstype == "cgroup" and options & set(controllers.split(",")):
                    if path == root or path.startswith(root.rstrip("/") + "/"):
                        dirs.append(os.path.normpath(point + "/" + path[len(root):]))
    return sorted(set(dirs))


def raise_own_limits() -> list:
    raised = []
    for d in own_cgroup_dirs():
        for name, value in LIMITS:
            try:
                with open(os.path.join(d, name), "w") as f:
                    f.write(value)
                raised.append(os.path.join(d, name))
            except OSError:
                pass
    return raised


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
    elif mode == "raise-limits":
        # A payload running as root that tries to lift its own job's limits through whatever shows them (then hogs
        # `arg` MB): every directory of its own cgroups that a mount shows, v1 and v2. It writes what it managed
        # into the file named by the third argument.
        raised = raise_own_limits()
        with open(argv[3], "w") as f:
            f.write("\n".join(raised) + "\n" if raised else "none\n")
        block = b"x" * (int(arg) << 20)
        print(f"holding {len(block) >> 20} MB", flush=True)
        hold(120)
    elif mode == "echo":
        print("no output file written", flush=True)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
