"""Real process trees for the tests: each process reports its pid on a pipe, so a test knows the exact members."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field


# The tree-building program, run as `python -c`. Its spec (JSON in argv[1]) says, per process:
#   children: list of child specs; threads: extra threads; thread_children: children forked from a non-main thread;
#   name: comm set through prctl; burn: CPU seconds to spend before idling; alloc_mb: memory to touch;
#   ignore_term: ignore SIGTERM; fork_on_term: fork this many SIGTERM-ignoring children when SIGTERMed.
_PROGRAM = r"""
import ctypes, json, os, signal, sys, threading, time

def set_name(name):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME

def idle():
    while True:
        time.sleep(3600)

def forked(spec):
    pid = os.fork()
    if pid == 0:
        try:
            become(spec)
        finally:
            os._exit(0)
    return pid

def become(spec):
    if spec.get("name"):
        set_name(spec["name"])
    if spec.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec.get("fork_on_term"):
        n = spec["fork_on_term"]
        def on_term(signum, frame):
            for _ in range(n):
                forked({"ignore_term": True})
        signal.signal(signal.SIGTERM, on_term)
    keep = None
    if spec.get("alloc_mb"):
        keep = bytearray(spec["alloc_mb"] * 1024 * 1024)
        for i in range(0, len(keep), 4096):
            keep[i] = 1
    end = time.process_time() + spec.get("burn", 0)
    while time.process_time() < end:
        pass
    for _ in range(spec.get("threads", 0)):
        threading.Thread(target=idle, daemon=True).start()
    for child in spec.get("children", []):
        forked(child)
    for child in spec.get("thread_children", []):
        t = threading.Thread(target=forked, args=(child,), daemon=True)
        t.start()
        t.join()
    try:
        os.write(REPORT, b"%d\n" % os.getpid())
    except OSError:
        pass  # late forks report to a pipe the test has closed already
    idle()

REPORT = int(sys.argv[2])
become(json.loads(sys.argv[1]))
"""


def count(spec: dict) -> int:
    return 1 + sum(count(c) for c in spec.get("children", []) + spec.get("thread_children", []))


@dataclass
class Tree:
    proc: subprocess.Popen
    pids: set[int] = field(default_factory=set)

    @property
    def root(self) -> int:
        return self.proc.pid

    def alive(self) -> set[int]:
        return {p for p in self.pids if _alive(p)}

    def cleanup(self) -> None:
        for pid in self.pids | {self.root}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def spawn(spec: dict, *, timeout: float = 30.0, new_session: bool = True) -> Tree:
    """Start the tree described by `spec` and return once every process has reported its pid."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROGRAM, json.dumps(spec), str(w)],
        pass_fds=(w,),
        start_new_session=new_session,
    )
    os.close(w)
    tree = Tree(proc)
    want = count(spec)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while len(tree.pids) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"tree reported {len(tree.pids)} of {want} pids")
            chunk = os.read(r, 4096)
            if not chunk:
                raise RuntimeError(f"tree exited after reporting {len(tree.pids)} of {want} pids")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            tree.pids.update(int(x) for x in lines if x)
    except BaseException:
        tree.cleanup()
        raise
    finally:
        os.close(r)
    return tree


def wait_until(pred, timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def flat(n: int, **leaf: object) -> dict:
    return {"children": [dict(leaf) for _ in range(n)]}


def chain(depth: int, **leaf: object) -> dict:
    spec: dict = dict(leaf)
    for _ in range(depth - 1):
        spec = {"children": [spec]}
    return spec


def balanced(total: int, fanout: int = 10) -> dict:
    """A tree of exactly `total` processes, `fanout` children per inner node, breadth first."""
    nodes: list[dict] = [{"children": []}]
    i = 0
    while len(nodes) < total:
        parent = nodes[i // fanout]
        child: dict = {"children": []}
        parent["children"].append(child)
        nodes.append(child)
        i += 1
    return nodes[0]


