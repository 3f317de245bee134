"""cgroup v1 for a job's limits on hybrid hosts (EL8 nodes, this project's build machines): there cgroup v2 is
mounted beside v1 hierarchies that hold the memory, pids and cpu controllers, so the limits can only be set in v1.

Process control (listing, freezing, killing) stays in v2 wherever v2 exists (gridpilot.isolation.cgroupfs); v1 is
used only to limit the job and to read its OOM kills. Each controller is its own hierarchy, so a job has one
directory per controller, each a child of this process's own cgroup in that hierarchy (never beside it: the limits
the batch system put on the pilot then still bind the job). Every function that reads /proc takes that file's path,
so tests can point it at fixtures; every failure is a CgroupError naming the path.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from gridpilot import _native
from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs
from gridpilot.isolation.limits import CONTROLLERS, JobLimits, oom_kills, v1_settings

_POLL_S = 0.01


def parse_v1_memberships(text: str) -> Dict[str, str]:
    """The v1 lines of a /proc/<pid>/cgroup text as {controller: path}; "cpu,cpuacct" gives both controllers.

    Named hierarchies (name=systemd) and the v2 line (0::) are left out.
    """
    out: Dict[str, str] = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers or hierarchy == "0":
            continue
        for c in controllers.split(","):
            if c and not c.startswith("name="):
                out[c] = path
    return out


def find_v1_mounts(mountinfo: cgroupfs.StrPath = cgroupfs.PROC_MOUNTINFO) -> Dict[str, cgroupfs.MountInfo]:
    """{controller: its v1 mount} from `mountinfo`; the controllers are in the super options ("rw,cpu,cpuacct")."""
    text = cgroupfs._read_text(mountinfo, "mountinfo")
    out: Dict[str, cgroupfs.MountInfo] = {}
    for m in cgroupfs.parse_mountinfo(text, os.fspath(mountinfo)):
        if m.fstype != "cgroup":
            continue
        for opt in m.super_options:
            # The first mount of a hierarchy wins: a bind mount of the same hierarchy elsewhere adds nothing.
            if opt in _KNOWN_CONTROLLERS and opt not in out:
                out[opt] = m
    return out


# What the kernel can mount as a v1 hierarchy; super options also hold rw, seclabel, xattr, release_agent=...
_KNOWN_CONTROLLERS = {
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio", "perf_event",
    "hugetlb", "pids", "rdma", "misc",
}


def own_v1_dirs(
    controllers: Iterable[str] = CONTROLLERS,
    mountinfo: cgroupfs.StrPath = cgroupfs.PROC_MOUNTINFO,
    proc_cgroup: cgroupfs.StrPath = cgroupfs.PROC_CGROUP,
) -> Tuple[Dict[str, Path], Dict[str, str]]:
    """This process's own directory in the v1 hierarchy of each of `controllers`, and why there is none for the rest.

    Returns ({controller: directory}, {controller: reason}).
    """
    mounts = find_v1_mounts(mountinfo)
    member = parse_v1_memberships(cgroupfs._read_text(proc_cgroup, "cgroup membership"))
    dirs: Dict[str, Path] = {}
    missing: Dict[str, str] = {}
    for c in controllers:
        if c not in mounts:
            missing[c] = f"no cgroup v1 hierarchy with the {c} controller in {os.fspath(mountinfo)}"
            continue
        path = member.get(c)
        if path is None:
            missing[c] = f"no {c} line in {os.fspath(proc_cgroup)}"
            continue
        m = mounts[c]
        rel = cgroupfs._below_root(path, m.root)
        if rel is None or "/.." in path + "/":
            missing[c] = f"this process's {c} cgroup {path} is not below the mount at {m.mount_point} (root {m.root})"
            continue
        dirs[c] = Path(m.mount_point) / rel
    return dirs, missing


def delegation_problem(path: cgroupfs.StrPath) -> Optional[str]:
    """Why this process may not make and fill children of the v1 cgroup `path`, or None when it may."""
    p = Path(path)
    if not (p / "cgroup.procs").is_file():
        return f"{p} is not a cgroup v1 directory (no cgroup.procs)"
    for target in (p, p / "cgroup.procs"):
        if not os.access(target, os.W_OK):
            return f"{target} is not writable by uid {os.geteuid()} (owner uid {_owner(target)})"
    return None


def _owner(path: Path) -> str:
    try:
        return str(path.stat().st_uid)
    except OSError:
        return "unknown"


def _write(path: Path, text: str) -> None:
    # As cgroupfs._write: one write() per value, no O_CREAT (a missing interface file is an error).
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class V1Cgroups:
    """One cgroup per v1 controller for the same purpose (a slot, an agent, a job): {controller: directory}."""

    def __init__(self, dirs: Mapping[str, cgroupfs.StrPath]) -> None:
        self.dirs: Dict[str, Path] = {c: Path(d) for c, d in dirs.items()}

    def __bool__(self) -> bool:
        return bool(self.dirs)

    def __repr__(self) -> str:
        return f"V1Cgroups({', '.join(f'{c}={d}' for c, d in self.dirs.items())})"

    def to_json(self) -> Dict[str, str]:
        return {c: str(d) for c, d in self.dirs.items()}

    def make_child(self, name: str, *, exist_ok: bool = False) -> V1Cgroups:
        """The child `name` in each hierarchy. On failure, what was made here is removed again."""
        if not name or name in (".", "..") or "/" in name or "\n" in name:
            raise CgroupError(f"invalid cgroup name {name!r}")
        made: Dict[str, Path] = {}
        try:
            for c, d in self.dirs.items():
                child = d / name
                try:
                    os.mkdir(child)
                except FileExistsError:
                    if not exist_ok:
                        raise CgroupError(f"cannot create cgroup {child}: it already exists") from None
                except OSError as e:
                    raise CgroupError(f"cannot create cgroup {child}: {e.strerror}") from e
                made[c] = child
        except CgroupError:
            V1Cgroups(made).remove(timeout=1.0)
            raise
        return V1Cgroups(made)

    def apply(self, limits: JobLimits) -> Tuple[List[str], List[str]]:
        """Write `limits` into the hierarchies this holds: ([file = value set], [what was not set, and why])."""
        memory = self.dirs.get("memory")
        # memsw files exist only with swap accounting (CONFIG_MEMCG_SWAP and swapaccount=1 on older kernels).
        memsw = memory is not None and (memory / "memory.memsw.limit_in_bytes").exists()
        done: List[str] = []
        skipped: List[str] = []
        if memory is not None and not memsw:
            skipped.append(f"memory.memsw.limit_in_bytes (no swap accounting in {memory}: swap is not limited)")
        for controller, name, value in v1_settings(limits, memsw=memsw):
            d = self.dirs.get(controller)
            if d is None:
                continue  # the caller reports the controllers it has no hierarchy for, once each
            f = d / name
            try:
                _write(f, value)
                done.append(f"{name}={value}")
            except FileNotFoundError:
                skipped.append(f"{name} (no such file in {d})")
            except OSError as e:
                skipped.append(f"{name}={value} ({f}: {e.strerror})")
        return done, skipped

    def join(self) -> None:
        """Move the calling process into every cgroup held here. Meant for a child between fork and exec."""
        for d in self.dirs.values():
            # "0" is the writer itself; its later children are born in the same cgroup.
            with open(d / "cgroup.procs", "w") as f:
                f.write("0")

    def move(self, pid: int) -> None:
        if pid <= 0:
            raise CgroupError(f"cannot move pid {pid}: not a process id")
        for d in self.dirs.values():
            try:
                _write(d / "cgroup.procs", str(pid))
            except OSError as e:
                raise CgroupError(f"cannot move pid {pid} into {d}: {e.strerror}") from e

    def procs(self) -> List[int]:
        """Every pid in any of the hierarchies, at this level and below, sorted."""
        pids: set[int] = set()
        for top in self.dirs.values():
            for dirpath, _, _ in os.walk(top):
                try:
                    pids.update(int(w) for w in (Path(dirpath) / "cgroup.procs").read_text().split())
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise CgroupError(f"cannot read {Path(dirpath) / 'cgroup.procs'}: {e.strerror}") from e
        return sorted(pids)

    def oom_kills(self) -> int:
        """OOM kills the kernel made in the memory cgroup (memory.oom_control, `oom_kill`); 0 without one."""
        d = self.dirs.get("memory")
        if d is None:
            return 0
        f = d / "memory.oom_control"
        try:
            return oom_kills(f.read_text(), str(f))
        except FileNotFoundError:
            return 0  # removed already: its count cannot grow any more
        except OSError as e:
            raise CgroupError(f"cannot read {f}: {e.strerror}") from e

    def memory_usage(self) -> Optional[int]:
        """What the memory cgroup is charged now (memory.usage_in_bytes: the v1 counterpart of v2's memory.current,
        which its limit_in_bytes bounds); None without a memory cgroup, or once it is gone."""
        d = self.dirs.get("memory")
        if d is None:
            return None
        f = d / "memory.usage_in_bytes"
        try:
            return int(f.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CgroupError(f"cannot read {f}: {e}") from e

    def failcnt(self) -> int:
        """How often the memory limit was hit (memory.failcnt): reclaim, not necessarily an OOM kill."""
        d = self.dirs.get("memory")
        if d is None:
            return 0
        try:
            return int((d / "memory.failcnt").read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            raise CgroupError(f"cannot read {d / 'memory.failcnt'}: {e}") from e

    def remove(self, *, timeout: float = 10.0) -> None:
        """SIGKILL what is left in these cgroups (v1 has no cgroup.kill), wait until they are empty, remove them and
        every cgroup below them, deepest first. Missing directories are fine; the caller inside is refused."""
        me = os.getpid()
        deadline = time.monotonic() + timeout
        while True:
            left = self.procs()
            if not left:
                break
            if me in left:
                raise CgroupError(f"refusing to empty {self!r}: this process ({me}) is inside it")
            if time.monotonic() >= deadline:
                raise CgroupError(f"{self!r} still holds pids {left} after {timeout:g} s")
            # Without a v1 freezer here a process may fork between listing and killing: the next round finds it.
            # The native kill path SIGKILLs each member by its identity (pid and start time, through a pidfd).
            for top in self.dirs.values():
                try:
                    _native.kill_cgroup(str(top))
                except CgroupError:
                    if top.exists():  # a directory removed meanwhile is fine, as above
                        raise
            time.sleep(_POLL_S)
        for top in self.dirs.values():
            if not top.exists():
                continue
            for dirpath, _, _ in os.walk(top, topdown=False):
                _rmdir(dirpath, deadline)


def _rmdir(path: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY: an exited task is still being released by the kernel; it goes within milliseconds.
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror}") from e
            time.sleep(_POLL_S)
