"""CgroupSampler: every field against the EL9 fixture directories, then a real process tree in a real cgroup."""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.require import require_or_skip
from gridpilot import _native
from gridpilot._native import CgroupSample, CgroupSampler
from gridpilot.errors import CgroupError, ParseError
from gridpilot.isolation import cgroupfs
from support import paths

FIXTURE_DIR = paths.FIXTURES / "cgroup"

# Each field of CgroupSample and the file it comes from: the field is None exactly when the file is absent.
SOURCE_FILE = {
    "cpu_usage_s": "cpu.stat",
    "cpu_user_s": "cpu.stat",
    "cpu_system_s": "cpu.stat",
    "memory_current": "memory.current",
    "memory_peak": "memory.peak",
    "memory_swap_current": "memory.swap.current",
    "memory_anon": "memory.stat",
    "memory_file": "memory.stat",
    "memory_shmem": "memory.stat",
    "oom": "memory.events",
    "oom_kill": "memory.events",
    "memory_max_events": "memory.events",
    "memory_high_events": "memory.events",
    "pids_current": "pids.current",
    "io_rbytes": "io.stat",
    "io_wbytes": "io.stat",
    "populated": "cgroup.events",
    "frozen": "cgroup.events",
}
# cpu.stat keys that exist only with the cpu controller enabled: None also when cpu.stat lacks the key.
BANDWIDTH = {"nr_periods": "nr_periods", "nr_throttled": "nr_throttled", "throttled_s": "throttled_usec"}

FIELDS = [name for name, value in vars(CgroupSample).items() if isinstance(value, type(CgroupSample.frozen))]


def counters(sample: CgroupSample) -> dict[str, object]:
    d = sample.to_dict()
    del d["timestamp"]
    return d


def test_sample_fields_match_the_stub() -> None:
    stub = Path(_native.__file__).parent / "_native.pyi"
    text = stub.read_text()
    section = text[text.index("class CgroupSample:") : text.index("class CgroupSampler:")]
    stub_fields = [line.split("def ")[1].split("(")[0] for line in section.splitlines() if "    def " in line]
    stub_fields.remove("to_dict")
    assert sorted(FIELDS) == sorted(stub_fields)
    assert list(counters(CgroupSampler(str(FIXTURE_DIR / "el9-job")).sample())) == [
        f for f in stub_fields if f != "timestamp"
    ]



def test_el9_job_every_field() -> None:
    sample = CgroupSampler(str(FIXTURE_DIR / "el9-job")).sample()
    expected = {
        "cpu_usage_s": 41532987654 / 1e6,
        "cpu_user_s": 40123456789 / 1e6,
        "cpu_system_s": 1409530865 / 1e6,
        "nr_periods": 72113,
        "nr_throttled": 1206,
        "throttled_s": 98766543 / 1e6,
        "memory_current": 9876541440,
        "memory_peak": 12348030976,
        "memory_swap_current": 268435456,
        "memory_anon": 9261023232,
        "memory_file": 547356672,
        "memory_shmem": 4194304,
        "oom": 0,
        "oom_kill": 0,
        "memory_max_events": 3,
        "memory_high_events": 17,
        "pids_current": 37,
        # Two devices: 259:0 (NVMe) and 8:16 (scratch disk).
        "io_rbytes": 2214428672 + 104857600,
        "io_wbytes": 5368709120 + 73400320,
        "populated": True,
        "frozen": False,
    }
    assert counters(sample) == expected
    for name, value in expected.items():
        assert getattr(sample, name) == value, name
    assert abs(sample.timestamp - time.time()) < 60


def test_el9_oom_every_field() -> None:
    sample = CgroupSampler(str(FIXTURE_DIR / "el9-oom")).sample()
    assert counters(sample) == {
        "cpu_usage_s": 905113422 / 1e6,
        "cpu_user_s": 871502113 / 1e6,
        "cpu_system_s": 33611309 / 1e6,
        "nr_periods": 9344,
        "nr_throttled": 587,
        "throttled_s": 4120931 / 1e6,
        "memory_current": 22450176,
        "memory_peak": None,  # this kernel has no memory.peak (upstream 5.19)
        "memory_swap_current": 0,
        "memory_anon": 10358784,
        "memory_file": 9437184,
        "memory_shmem": 0,
        "oom": 2,
        "oom_kill": 1,
        "memory_max_events": 1287,
        "memory_high_events": 0,
        "pids_current": 3,
        "io_rbytes": 58195968,
        "io_wbytes": 1048576,
        "populated": True,
        "frozen": True,
    }


def test_minimal_delegation_every_field() -> None:
    sample = CgroupSampler(str(FIXTURE_DIR / "minimal-delegation")).sample()
    expected: dict[str, object] = dict.fromkeys(counters(sample), None)
    expected.update(cpu_usage_s=1.534027, cpu_user_s=1.190562, cpu_system_s=0.343465, populated=True, frozen=False)
    assert counters(sample) == expected


@pytest.mark.parametrize("name", ["el9-job", "el9-oom", "minimal-delegation"])
def test_fixtures_are_consistent(name: str) -> None:
    cgroup = FIXTURE_DIR / name

    def keyed(filename: str) -> dict[str, int]:
        words = (cgroup / filename).read_text().split()
        return {k: int(v) for k, v in zip(words[::2], words[1::2])}

    cpu = keyed("cpu.stat")
    assert cpu["user_usec"] + cpu["system_usec"] == cpu["usage_usec"]
    if (cgroup / "pids.current").exists():
        assert int((cgroup / "pids.current").read_text()) == len((cgroup / "cgroup.threads").read_text().split())
    if (cgroup / "memory.stat").exists():
        mem = keyed("memory.stat")
        assert mem["active_anon"] + mem["inactive_anon"] == mem["anon"] + mem["shmem"]
        assert mem["active_file"] + mem["inactive_file"] == mem["file"] - mem["shmem"]
        assert mem["slab_reclaimable"] + mem["slab_unreclaimable"] == mem["slab"]
    assert set((cgroup / "cgroup.procs").read_text().split()) <= set((cgroup / "cgroup.threads").read_text().split())


@pytest.mark.parametrize("name", ["el9-job", "el9-oom", "minimal-delegation"])
def test_none_exactly_when_the_file_is_absent(name: str) -> None:
    assert_none_exactly_when_absent(FIXTURE_DIR / name, CgroupSampler(str(FIXTURE_DIR / name)).sample())


def assert_none_exactly_when_absent(cgroup: Path, sample: CgroupSample) -> None:
    for field, filename in SOURCE_FILE.items():
        present = (cgroup / filename).exists()
        assert (getattr(sample, field) is None) == (not present), f"{field} from {cgroup / filename}"
    cpu_stat = (cgroup / "cpu.stat").read_text().split()[::2] if (cgroup / "cpu.stat").exists() else []
    for field, key in BANDWIDTH.items():
        assert (getattr(sample, field) is None) == (key not in cpu_stat), f"{field} from cpu.stat {key}"


def test_repr_shows_path_files_and_present_counters() -> None:
    sampler = CgroupSampler(str(FIXTURE_DIR / "minimal-delegation"))
    assert sampler.path == str(FIXTURE_DIR / "minimal-delegation")
    assert repr(sampler) == f"CgroupSampler('{FIXTURE_DIR / 'minimal-delegation'}', files=[cpu.stat, cgroup.events])"
    text = repr(sampler.sample())
    assert text.startswith("CgroupSample(timestamp=")
    assert "cpu_usage_s=1.534027" in text and "populated=True" in text and "memory_current" not in text


def test_missing_directory_is_a_cgroup_error() -> None:
    missing = FIXTURE_DIR / "no-such-job"
    with pytest.raises(CgroupError, match=f"{missing}: no such cgroup directory"):
        CgroupSampler(str(missing))


def test_non_cgroup_directories_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")  # a v1 directory has cgroup.procs, but no v2 core files
    with pytest.raises(CgroupError, match="not a cgroup v2 directory"):
        CgroupSampler(str(tmp_path))
    with pytest.raises(CgroupError, match="not a directory"):
        CgroupSampler(str(tmp_path / "cgroup.procs"))


def test_unparsable_counter_is_a_parse_error_naming_the_file(tmp_path: Path) -> None:
    cgroup = tmp_path / "job"
    shutil.copytree(FIXTURE_DIR / "minimal-delegation", cgroup)
    (cgroup / "pids.current").write_text("lots\n")
    with pytest.raises(ParseError, match="pids.current"):
        CgroupSampler(str(cgroup)).sample()


# --- a real cgroup ---------------------------------------------------------------------------------------------

# Parent forks `n` children that wait for one byte each on the `go` pipe, then burn `burn_s` of CPU, print the CPU
# time they used and sleep. The parent prints the children's pids first, so the test can move the whole tree
# into the cgroup before any CPU is burnt.
TREE = r"""
import os, sys, time
go, burn_s, n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.read(go, 1)
        while time.process_time() < burn_s:
            pass
        os.write(1, f"{time.process_time()}\n".encode())  # one write(), so the two children's lines never mix
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
os.write(1, (" ".join(map(str, kids)) + "\n").encode())
for _ in kids:
    os.wait()
"""


@dataclass
class Tree:
    parent: subprocess.Popen[bytes]
    kids: list[int]
    go: int

    @property
    def pids(self) -> list[int]:
        return [self.parent.pid, *self.kids]

    def read_lines(self, n: int, timeout: float = 60.0) -> list[str]:
        """n lines from the tree's stdout; a generous deadline so a hung tree fails the test instead of hanging it."""
        assert self.parent.stdout is not None
        fd = self.parent.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout
        while data.count(b"\n") < n:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            assert chunk, f"process tree stopped talking; got {data!r}"
            data += chunk
        return data.decode().splitlines()


PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _set_subreaper(on: int) -> int:
    """Set this process's child-subreaper flag and return the previous one."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    return previous.value


@pytest.fixture
def process_tree() -> Iterator[Tree]:
    # cgroup.kill kills the tree's parent together with its children, which are then orphaned. Without a subreaper
    # they go to pid 1, which is not systemd on the build machines and reaps them only seconds later; as subreaper
    # the test reaps them itself and leaves nothing behind.
    previous = _set_subreaper(1)
    go_r, go_w = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE, str(go_r), "0.3", "2"], stdout=subprocess.PIPE, pass_fds=(go_r,)
    )
    os.close(go_r)
    tree = Tree(parent, [], go_w)
    try:
        tree.kids = [int(p) for p in tree.read_lines(1)[0].split()]
        yield tree
    finally:
        # Normally cgroup_dir's teardown has killed the tree already; this covers a test failing before the move.
        for pid in tree.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.wait(timeout=30)
        for kid in tree.kids:
            try:
                os.waitpid(kid, 0)
            except ChildProcessError:
                pass  # reaped by the tree's parent before it died
        _set_subreaper(previous)
        assert parent.stdout is not None
        parent.stdout.close()
        os.close(go_w)


@pytest.mark.cgroup
def test_real_process_tree(cgroup_dir: Path, process_tree: Tree) -> None:
    sampler = CgroupSampler(str(cgroup_dir))
    empty = sampler.sample()
    assert empty.populated is False
    assert empty.cpu_usage_s == 0.0

    for pid in process_tree.pids:
        cgroupfs.move_pid(cgroup_dir, pid)
    assert cgroupfs.procs(cgroup_dir) == sorted(process_tree.pids)
    before = sampler.sample()
    assert before.populated is True
    assert before.frozen is False
    assert before.cpu_usage_s is not None

    os.write(process_tree.go, b"x" * len(process_tree.kids))
    burnt = sum(float(line) for line in process_tree.read_lines(len(process_tree.kids)))
    after = sampler.sample()
    assert after.cpu_usage_s is not None and after.cpu_user_s is not None
    # The cgroup accounts the same scheduler runtime the children measured; slack for what they used before the move.
    assert after.cpu_usage_s - before.cpu_usage_s >= 0.8 * burnt
    assert before.cpu_user_s is not None and after.cpu_user_s > before.cpu_user_s  # the burn is user time
    assert after.populated is True

    # Memory and pids counters exist only where those controllers are delegated (not on a hybrid host's v2).
    assert_none_exactly_when_absent(cgroup_dir, after)

    if not cgroupfs.set_frozen(cgroup_dir, True):
        require_or_skip(f"no cgroup.freeze in {cgroup_dir} (Linux < 5.2)")
    assert cgroupfs.wait_event(cgroup_dir, "frozen", 1, timeout=30)
    assert sampler.sample().frozen is True
    cgroupfs.set_frozen(cgroup_dir, False)
    assert cgroupfs.wait_event(cgroup_dir, "frozen", 0, timeout=30)
    assert sampler.sample().frozen is False

    if not (cgroup_dir / "cgroup.kill").exists():
        require_or_skip(f"no cgroup.kill in {cgroup_dir} (Linux < 5.14)")
    cgroupfs.kill_members(cgroup_dir)
    assert cgroupfs.wait_event(cgroup_dir, "populated", 0, timeout=30)
    final = sampler.sample()
    assert final.populated is False
    assert cgroupfs.procs(cgroup_dir) == []
    assert process_tree.parent.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.cgroup
def test_sampling_a_removed_cgroup_is_a_cgroup_error(cgroup_dir: Path) -> None:
    sampler = CgroupSampler(str(cgroup_dir))
    assert sampler.sample().populated is False
    os.rmdir(cgroup_dir)
    with pytest.raises(CgroupError, match=f"{cgroup_dir}: the cgroup was removed"):
        sampler.sample()
