"""TreeSampler under a low RLIMIT_NOFILE: every process of a 1000-process job is counted, or counted as unread.

Each case samples in a child process whose soft limit is set before gridpilot is imported (the limit is the
child's own, never the host's), and compares with the tree's RSS read here from statm, independently of the
sampler.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from support import proctree

NPROCS = 1000

# argv: root pid, soft limit, mode. Prints the samples as JSON (without their pid lists).
_CHILD = r"""
import json, os, resource, sys
root, soft, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from gridpilot import _native
sampler = _native.TreeSampler(root)
out = []
def record():
    d = sampler.sample().to_dict()
    d.pop("pids")
    d["kept_fds"] = sampler.kept_fds
    out.append(d)
# The first sample keeps what it opens first; the next ones keep what the budget's plan says (stat first).
for _ in range(3):
    record()
if mode == "hog":
    # The rest of the process takes every descriptor left, including those the budget counted on.
    hog = []
    while True:
        try:
            hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    record()
    record()
elif mode == "starve":
    # Below every descriptor the process holds: nothing at all can be opened any more.
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
    record()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    record()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_tree():
    tree = proctree.spawn(proctree.balanced(NPROCS), timeout=600)
    try:
        yield tree
    finally:
        tree.cleanup()


def statm_rss(pids) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/statm", "rb") as f:
            total += int(f.read().split()[1]) * page
    return total


def sample_in_child(root: int, soft: int, mode: str = "plain") -> list:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < soft:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is below the {soft} this case needs")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(soft), mode],
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


@pytest.mark.parametrize("soft", [256, 64])
def test_every_process_counted_under_a_low_limit(big_tree, soft):
    rss = statm_rss(big_tree.pids)
    samples = sample_in_child(big_tree.root, soft)
    for s in samples:
        assert s["nprocs"] == NPROCS
        assert s["unread"] == 0 and s["unread_reasons"] == {}
        assert s["rss_bytes"] == pytest.approx(rss, rel=0.05)
        # stat's rss is the kernel's approximate counter; statm's the exact sum: they differ by a few pages each.
    # The budget holds: soft limit less the reserve (rust/src/core/fdbudget.rs), all of it stat descriptors here.
    assert 0 < samples[-1]["kept_fds"] <= soft // 2


def test_emfile_from_the_rest_of_the_process_closes_a_kept_file_and_reads_on(big_tree):
    samples = sample_in_child(big_tree.root, 256, "hog")
    before, hogged = samples[2], samples[3:]
    assert before["kept_fds"] > 0
    for s in hogged:
        assert s["nprocs"] == NPROCS and s["unread"] == 0, s
        assert s["kept_fds"] < before["kept_fds"]


def test_nothing_can_be_opened_reports_every_process_unread(big_tree):
    samples = sample_in_child(big_tree.root, 256, "starve")
    starved, recovered = samples[3], samples[4]
    assert starved["nprocs"] == 0
    assert starved["unread"] == NPROCS
    assert starved["unread_reasons"] == {"EMFILE": NPROCS}
    assert starved["kept_fds"] == 0
    assert recovered["nprocs"] == NPROCS and recovered["unread"] == 0


# --- the job monitor: traced, and memory a lower bound -------------------------------------------------------

_MONITOR = r"""
import json, resource, sys
from pathlib import Path
root, workdir = int(sys.argv[1]), Path(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
from gridpilot.pilot.monitor import JobMonitor
from gridpilot.pilot.rules import Limits, UNMEASURED_MEMORY_S
now = [0.0]
traces = []
m = JobMonitor(root, workdir, Limits(memory_bytes=1 << 40), clock=lambda: now[0], trace=traces.append)
m.mark_running()
out = {"first": str(m.poll(force_slow=True))}
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
now[0] += 1
out["starved"] = str(m.poll(force_slow=True))
obs = m.observation(now[0])
out["source"] = obs.memory_source
out["unread_procs"] = m.resources()["unread_procs"]
now[0] += UNMEASURED_MEMORY_S + 1
out["later"] = str(m.poll())
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
now[0] += 1
out["recovered"] = str(m.poll())
out["traces"] = traces
print(json.dumps(out))
"""


def test_monitor_traces_unread_processes_and_ends_a_job_it_cannot_measure(tmp_path):
    tree = proctree.spawn(proctree.balanced(30), timeout=120)
    try:
        out = subprocess.run([sys.executable, "-c", _MONITOR, str(tree.root), str(tmp_path)],
                             capture_output=True, timeout=300)
    finally:
        tree.cleanup()
    assert out.returncode == 0, out.stderr.decode()
    got = json.loads(out.stdout)
    assert got["first"] == "None" and got["starved"] == "None"
    assert got["source"].startswith("pss+swap, a lower bound: 30 process(es) unread")
    assert got["unread_procs"] == 30
    # Traced once when it starts, not at every sample while it lasts.
    warn = [t for t in got["traces"] if "processes of the job cannot be read" in t]
    assert warn == ["[WARN] monitor: 30 of 30 processes of the job cannot be read (EMFILE 30): its CPU and memory "
                    "figures are lower bounds"]
    # The work directory cannot be walked either: said so, and the monitor goes on.
    assert any(t.startswith("[WARN] monitor: cannot measure the work directory's size") for t in got["traces"])
    assert "MEMORY_USAGE" in got["later"] and "cannot be measured" in got["later"]
    assert any(t.startswith("monitor: every process of the job is read again (30 processes)") for t in got["traces"])
    assert got["recovered"] == "None"


# --- access denied: counted by reason --------------------------------------------------------------------------

def _fake_proc(root: Path) -> None:
    """pid 4242 with children 4243, whose stat nobody may read, and 4244, whose children nobody may list."""
    for pid, kids in ((4242, "4243 4244 "), (4243, ""), (4244, "4245 ")):
        d = root / str(pid)
        (d / "task" / str(pid)).mkdir(parents=True)
        (d / "task" / str(pid) / "children").write_text(kids)
        (d / "stat").write_text(f"{pid} (job) S 1 {pid} {pid} 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 {pid} 1000 10 0\n")
    (root / "self").symlink_to("4242")
    (root / "4243" / "stat").chmod(0)
    (root / "4244" / "task" / "4244" / "children").chmod(0)


def _without_dac_override() -> None:
    """preexec_fn: root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH after exec, so file modes apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def test_unreadable_process_and_children_are_counted(tmp_path):
    _fake_proc(tmp_path)
    code = ("import json, sys; from gridpilot import _native; "
            "s = _native.TreeSampler(4242, proc=sys.argv[1]).sample(); "
            "print(json.dumps([s.pids, s.unread, s.unread_reasons, s.unlisted]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, timeout=120,
                         preexec_fn=_without_dac_override if os.geteuid() == 0 else None)
    assert out.returncode == 0, out.stderr.decode()
    pids, unread, reasons, unlisted = json.loads(out.stdout)
    assert pids == [4242, 4244]
    assert unread == 1 and reasons == {"EACCES": 1}
    # 4244 was read, but its children (4245) could not be listed: said so, not passed over.
    assert unlisted == 1
