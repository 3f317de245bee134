"""gridpilot.isolation.cgroupfs: mountinfo and /proc/self/cgroup on fixture captures, then real cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cgroups import make_test_cgroup
from support.require import REQUIRE_ALL_ENV, require_or_skip
from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs
from support import paths

PROC = paths.FIXTURES / "cgroup" / "proc"


def proc_files(case: str) -> tuple[Path, Path]:
    return PROC / case / "mountinfo", PROC / case / "cgroup"


# --- parsing, on captures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "mount", "own_dir"),
    [
        ("el9-unified", "/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_4242/step_batch/user/task_0"),
        (
            "el8-hybrid",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/unified/system.slice/condor.service/condor_var_lib_condor_execute_slot1_3@wn042.example.org",
        ),
        ("this-host-hybrid", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified"),
        ("container-cgroupns", "/sys/fs/cgroup", "/sys/fs/cgroup"),
        # Without a cgroup namespace the mount shows only the container's subtree (mountinfo root field).
        ("docker-no-cgroupns", "/sys/fs/cgroup", "/sys/fs/cgroup"),
    ],
)
def test_v2_mount_and_own_directory(case: str, mount: str, own_dir: str) -> None:
    mountinfo, cgroup = proc_files(case)
    assert cgroupfs.find_v2_mount(mountinfo) == Path(mount)
    assert cgroupfs.own_v2_dir(mountinfo, cgroup) == Path(own_dir)


def test_v1_only_host_is_reported_with_what_it_has() -> None:
    mountinfo, cgroup = proc_files("el7-v1")
    with pytest.raises(CgroupError) as e:
        cgroupfs.find_v2_mount(mountinfo)
    assert str(e.value) == (
        f"no cgroup2 mount in {mountinfo} (only cgroup v1 hierarchies: /sys/fs/cgroup/systemd, "
        "/sys/fs/cgroup/cpu,cpuacct, /sys/fs/cgroup/memory, /sys/fs/cgroup/pids, /sys/fs/cgroup/freezer)"
    )
    with pytest.raises(CgroupError, match=f"no cgroup v2 membership \\('0::' line\\) in {cgroup}"):
        cgroupfs.own_v2_path(cgroup)
    assert cgroupfs.parse_proc_cgroup(cgroup.read_text()) is None


def test_mountinfo_fields_with_and_without_optional_tags() -> None:
    hybrid = cgroupfs.parse_mountinfo((PROC / "el8-hybrid" / "mountinfo").read_text())
    v2 = [m for m in hybrid if m.fstype == "cgroup2"]
    assert v2 == [
        cgroupfs.MountInfo(
            mount_id=29,
            parent_id=28,
            root="/",
            mount_point="/sys/fs/cgroup/unified",
            options=("rw", "nosuid", "nodev", "noexec", "relatime"),
            optional_fields=("shared:5",),
            fstype="cgroup2",
            source="cgroup2",
            super_options=("rw", "seclabel", "nsdelegate"),
        )
    ]
    here = cgroupfs.parse_mountinfo((PROC / "this-host-hybrid" / "mountinfo").read_text())
    assert [(m.mount_point, m.optional_fields) for m in here if m.fstype == "cgroup2"] == [
        ("/sys/fs/cgroup/unified", ())
    ]
    several = cgroupfs.parse_mountinfo("40 31 0:37 / /sys/fs/cgroup rw shared:9 master:2 propagate_from:1 - cgroup2 none rw")
    assert several[0].optional_fields == ("shared:9", "master:2", "propagate_from:1")
    assert several[0].source == "none"


def test_mountinfo_escapes_are_decoded(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("50 1 0:40 / /mnt/cgroup\\040v2\\134x rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroupfs.find_v2_mount(mountinfo) == Path("/mnt/cgroup v2\\x")


def test_malformed_mountinfo_names_file_and_line(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n23 22 0:22 / /sys rw sysfs sysfs rw\n")
    with pytest.raises(CgroupError, match=f"{mountinfo} line 2: no ' - ' separator"):
        cgroupfs.find_v2_mounts(mountinfo)


def test_unreadable_proc_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=f"cannot read mountinfo {tmp_path / 'absent'}"):
        cgroupfs.find_v2_mount(tmp_path / "absent")


def test_proc_cgroup_takes_the_v2_line_only() -> None:
    text = (PROC / "el8-hybrid" / "cgroup").read_text()
    # The name=systemd v1 line has the same path but is not the v2 membership.
    assert cgroupfs.parse_proc_cgroup(text) == (
        "/system.slice/condor.service/condor_var_lib_condor_execute_slot1_3@wn042.example.org"
    )
    assert cgroupfs.parse_proc_cgroup("0::/a:b/c\n") == "/a:b/c"


def test_own_cgroup_outside_namespace_or_mount(tmp_path: Path) -> None:
    mountinfo, _ = proc_files("docker-no-cgroupns")
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/../../user.slice\n")
    with pytest.raises(CgroupError, match="outside its cgroup namespace"):
        cgroupfs.own_v2_dir(mountinfo, cgroup)
    cgroup.write_text("0::/system.slice/docker-other.scope\n")
    with pytest.raises(
        CgroupError,
        match="cgroup /system.slice/docker-other.scope is not below any cgroup2 mount "
        r"\(/system.slice/docker-4f2a9c1e.scope at /sys/fs/cgroup\)",
    ):
        cgroupfs.own_v2_dir(mountinfo, cgroup)


# --- the conftest rule: skip with the reason, or fail where everything is required ---------------------------


def test_require_or_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no widget$"):
        require_or_skip("no widget")
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ALL_ENV} is set.*: no widget$"):
        require_or_skip("no widget")


def test_test_cgroup_on_a_v1_only_host_skips_with_what_it_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    mountinfo, cgroup = proc_files("el7-v1")
    with pytest.raises(pytest.skip.Exception) as e:
        make_test_cgroup(mountinfo, cgroup)
    assert str(e.value.msg).startswith(
        f"no writable cgroup v2 hierarchy: no cgroup2 mount in {mountinfo} (only cgroup v1 hierarchies: "
    )


def test_test_cgroup_where_the_mount_is_no_cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    mountinfo, cgroup = tmp_path / "mountinfo", tmp_path / "cgroup"
    mountinfo.write_text(f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n")
    cgroup.write_text("0::/\n")
    with pytest.raises(pytest.fail.Exception, match=f"no writable cgroup v2 hierarchy: own cgroup {tmp_path} is not"):
        make_test_cgroup(mountinfo, cgroup)


# --- writing, on fake directories (errors and guards that a real cgroup cannot show safely) ----------------------


def fake_cgroup(path: Path, *, controllers: str = "", procs: str = "") -> Path:
    """A plain directory with the core files of a non-root cgroup v2 (regular files, so writes are just recorded)."""
    path.mkdir()
    for name, text in [
        ("cgroup.controllers", controllers),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", procs),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cgroup.kill", ""),
    ]:
        (path / name).write_text(text)
    return path


def test_enable_controllers_writes_only_available_ones(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path / "slot", controllers="cpuset cpu io memory pids\n")
    assert cgroupfs.enable_controllers(cg, ["memory", "pids", "hugetlb", "memory"]) == ["memory", "pids"]
    assert (cg / "cgroup.subtree_control").read_text() == "+memory +pids"
    (cg / "cgroup.subtree_control").write_text("memory pids\n")
    assert cgroupfs.enable_controllers(cg, ["pids", "cpu"]) == ["pids", "cpu"]
    assert (cg / "cgroup.subtree_control").read_text() == "+cpu"  # pids was enabled already
    assert cgroupfs.available_controllers(cg) == ["cpuset", "cpu", "io", "memory", "pids"]


def test_make_child_refuses_bad_names_and_non_cgroups(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path / "slot")
    for name in ["", ".", "..", "a/b", "a\nb"]:
        with pytest.raises(CgroupError, match="invalid cgroup name"):
            cgroupfs.make_child(cg, name)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(CgroupError, match=f"{plain} is not a cgroup v2 directory"):
        cgroupfs.make_child(plain, "job")


def test_move_pid_refuses_zero_and_names_missing_cgroup(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="cannot move pid 0 into"):
        cgroupfs.move_pid(tmp_path, 0)
    with pytest.raises(CgroupError, match=f"cannot move pid {os.getpid()} into {tmp_path / 'gone'}: no such cgroup"):
        cgroupfs.move_pid(tmp_path / "gone", os.getpid())


def test_remove_refuses_a_cgroup_holding_the_caller(tmp_path: Path) -> None:
    cg = fake_cgroup(tmp_path / "job")
    fake_cgroup(cg / "sub", procs=f"{os.getpid()}\n")
    with pytest.raises(CgroupError, match=f"refusing to kill the members of {cg}: this process"):
        cgroupfs.remove(cg)
    assert (cg / "cgroup.kill").read_text() == ""
    assert (cg / "sub").is_dir()


def test_remove_refuses_non_cgroups_and_ignores_missing(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="refusing to remove .*no cgroup.events"):
        cgroupfs.remove(tmp_path)
    assert cgroupfs.remove(tmp_path / "absent") is False


# --- real cgroups ----------------------------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "600"])
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


@pytest.mark.cgroup
def test_fixture_cgroup_is_below_our_own(cgroup_dir: Path) -> None:
    own = cgroupfs.own_v2_dir()
    assert cgroup_dir.parent == own
    assert cgroupfs.is_v2_dir(cgroup_dir) and cgroupfs.can_make_children(cgroup_dir)
    assert cgroupfs.procs(cgroup_dir) == [] and cgroupfs.is_populated(cgroup_dir) is False


@pytest.mark.cgroup
def test_make_child_and_move(cgroup_dir: Path, sleeper: subprocess.Popen[bytes]) -> None:
    job = cgroupfs.make_child(cgroup_dir, "job")
    assert cgroupfs.make_child(cgroup_dir, "job", exist_ok=True) == job
    with pytest.raises(CgroupError, match=f"cannot create cgroup {job}: it already exists"):
        cgroupfs.make_child(cgroup_dir, "job")
    cgroupfs.move_pid(job, sleeper.pid)
    assert cgroupfs.procs(job) == [sleeper.pid]
    assert cgroupfs.procs(cgroup_dir) == []
    assert cgroupfs.procs(cgroup_dir, recursive=True) == [sleeper.pid]
    assert cgroupfs.is_populated(cgroup_dir)  # populated counts the whole subtree
    # The kernel now reports the sleeper's membership as our own cgroup path plus job's place below it.
    expected = cgroupfs.own_v2_path().rstrip("/") + "/" + str(job.relative_to(cgroupfs.own_v2_dir()))
    assert cgroupfs.parse_proc_cgroup(Path(f"/proc/{sleeper.pid}/cgroup").read_text()) == expected


@pytest.mark.cgroup
def test_move_a_pid_that_is_gone(cgroup_dir: Path) -> None:
    done = subprocess.Popen(["true"])
    done.wait()
    with pytest.raises(CgroupError, match=f"cannot move pid {done.pid} into {cgroup_dir}: no such process"):
        cgroupfs.move_pid(cgroup_dir, done.pid)


@pytest.mark.cgroup
def test_enable_controllers_takes_what_is_delegated(cgroup_dir: Path) -> None:
    available = cgroupfs.available_controllers(cgroup_dir)
    wanted = ["cpu", "memory", "pids", "io"]
    enabled = cgroupfs.enable_controllers(cgroup_dir, wanted)
    assert enabled == [c for c in wanted if c in available]
    assert set(enabled) <= set(cgroupfs.enabled_controllers(cgroup_dir))


@pytest.mark.cgroup
def test_freeze_and_thaw(cgroup_dir: Path, sleeper: subprocess.Popen[bytes]) -> None:
    cgroupfs.move_pid(cgroup_dir, sleeper.pid)
    if not cgroupfs.set_frozen(cgroup_dir, True):
        require_or_skip(f"no cgroup.freeze in {cgroup_dir} (Linux < 5.2)")
    assert cgroupfs.wait_event(cgroup_dir, "frozen", 1, timeout=30)
    assert cgroupfs.set_frozen(cgroup_dir, False)
    assert cgroupfs.wait_event(cgroup_dir, "frozen", 0, timeout=30)
    assert sleeper.poll() is None


@pytest.mark.cgroup
def test_remove_kills_members_and_removes_nested_cgroups(cgroup_dir: Path, sleeper: subprocess.Popen[bytes]) -> None:
    deep = cgroupfs.make_child(cgroupfs.make_child(cgroupfs.make_child(cgroup_dir, "job"), "a"), "b")
    cgroupfs.make_child(cgroup_dir / "job", "empty")
    cgroupfs.move_pid(deep, sleeper.pid)
    assert cgroupfs.remove(cgroup_dir / "job", timeout=30) is True
    assert sleeper.wait(timeout=30) == -signal.SIGKILL
    assert not (cgroup_dir / "job").exists()
    assert cgroupfs.remove(cgroup_dir / "job") is False
