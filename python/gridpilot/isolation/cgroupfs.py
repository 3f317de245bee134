"""cgroup v2 from Python: find the hierarchy and this process's place in it, make job cgroups, fill and remove them.

Pure stdlib, no native code: this runs once per job, not per sample. Reading a job's counters is the fast tier's
work (gridpilot._native.CgroupSampler). Every function that reads /proc takes that file's path, so tests can point
it at fixtures. Every failure is a CgroupError whose message names the path involved.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from gridpilot import _native
from gridpilot.errors import CgroupError

StrPath = Union[str, "os.PathLike[str]"]

PROC_MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"

# Polling step while waiting for cgroup.events to change. The kernel also signals changes through poll()/inotify on
# that file, but a short sleep is simpler, works on fixture directories and costs nothing at the rate jobs end.
_POLL_S = 0.01


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo (proc(5)); paths are unescaped."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mountinfo paths as \ooo octal escapes.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, source: str = "mountinfo") -> list[MountInfo]:
    """Parse the text of a mountinfo file; `source` names it in errors."""
    mounts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        # Zero or more optional fields ("shared:5", "master:1", ...) sit between the mount options and " - ".
        try:
            sep = fields.index("-", 6)
        except ValueError:
            raise CgroupError(f"{source} line {lineno}: no ' - ' separator after six fields: {line!r}") from None
        if len(fields) < sep + 3:
            raise CgroupError(f"{source} line {lineno}: fewer than three fields after ' - ': {line!r}")
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            raise CgroupError(f"{source} line {lineno}: mount ids are not numbers: {line!r}") from None
        mounts.append(
            MountInfo(
                mount_id=mount_id,
                parent_id=parent_id,
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=tuple(fields[5].split(",")),
                optional_fields=tuple(fields[6:sep]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> Optional[str]:
    """The cgroup v2 path of a /proc/<pid>/cgroup text (its `0::` line), or None on a v1-only system."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            return path
    return None


def _read_text(path: StrPath, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"cannot read {what} {os.fspath(path)}: {e.strerror or e}") from e


def find_v2_mounts(mountinfo: StrPath = PROC_MOUNTINFO) -> list[MountInfo]:
    """Every cgroup2 mount in `mountinfo`, in mount order; CgroupError (saying what there is instead) when none."""
    mounts = parse_mountinfo(_read_text(mountinfo, "mountinfo"), os.fspath(mountinfo))
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    if v2:
        return v2
    v1 = [m.mount_point for m in mounts if m.fstype == "cgroup"]
    found = f"only cgroup v1 hierarchies: {', '.join(v1)}" if v1 else "no cgroup mounts at all"
    raise CgroupError(f"no cgroup2 mount in {os.fspath(mountinfo)} ({found})")


def find_v2_mount(mountinfo: StrPath = PROC_MOUNTINFO) -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones."""
    return Path(find_v2_mounts(mountinfo)[0].mount_point)


def own_v2_path(proc_cgroup: StrPath = PROC_CGROUP) -> str:
    """This process's cgroup v2 path, relative to the hierarchy (or cgroup namespace) root, e.g. "/" or "/a/b"."""
    path = parse_proc_cgroup(_read_text(proc_cgroup, "cgroup membership"))
    if path is None:
        raise CgroupError(f"no cgroup v2 membership ('0::' line) in {os.fspath(proc_cgroup)}")
    return path


def _below_root(path: str, root: str) -> Optional[str]:
    """`path` relative to `root` ("" for the root itself), or None when it lies outside."""
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return None


def own_v2_dir(mountinfo: StrPath = PROC_MOUNTINFO, proc_cgroup: StrPath = PROC_CGROUP) -> Path:
    """The directory of this process's own cgroup v2, e.g. /sys/fs/cgroup/unified on this build machine.

    A mount may show only a subtree (its mountinfo root, as in a container without a cgroup namespace); the
    directory is then the mount point plus the part of our path below that root.
    """
    # Mounts first: on a v1-only host "no cgroup2 mount, only v1 hierarchies: ..." says more than "no 0:: line".
    mounts = find_v2_mounts(mountinfo)
    own = own_v2_path(proc_cgroup)
    # A cgroup outside our cgroup namespace shows as "/../..": no mount we can see holds it.
    if "/.." in own + "/" or not own.startswith("/"):
        raise CgroupError(f"this process's cgroup {own!r} ({os.fspath(proc_cgroup)}) is outside its cgroup namespace")
    for m in mounts:
        rel = _below_root(own, m.root)
        if rel is not None:
            return Path(m.mount_point) / rel
    roots = ", ".join(f"{m.root} at {m.mount_point}" for m in mounts)
    raise CgroupError(f"this process's cgroup {own} is not below any cgroup2 mount ({roots})")


def is_v2_dir(path: StrPath) -> bool:
    """True when `path` is a cgroup v2 directory (v1 directories have cgroup.procs but no cgroup.controllers)."""
    p = Path(path)
    return (p / "cgroup.controllers").is_file() and (p / "cgroup.procs").is_file()


def can_make_children(path: StrPath) -> bool:
    """True when this process may create child cgroups in `path` and move its own processes into them.

    Moving a process needs write access to cgroup.procs of the common ancestor of its old and new cgroup, which
    for a child of our own cgroup is `path` itself. access() also answers False on a read-only mount (EROFS).
    """
    p = Path(path)
    return (
        is_v2_dir(p)
        and os.access(p, os.W_OK | os.X_OK)
        and os.access(p / "cgroup.procs", os.W_OK)
    )


def _write(path: Path, text: str) -> None:
    # One write() per value, as the kernel parses each write on its own. O_TRUNC as `echo 1 > file` does (the kernel
    # ignores it; a regular file standing in for a cgroup in tests then holds exactly the last value). No O_CREAT:
    # a missing interface file is an error, not a new regular file.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def make_child(parent: StrPath, name: str, *, exist_ok: bool = False) -> Path:
    """Create the cgroup `parent/name` and return its path."""
    parent = Path(parent)
    if not name or name in (".", "..") or "/" in name or "\n" in name:
        raise CgroupError(f"invalid cgroup name {name!r} below {parent}")
    if not is_v2_dir(parent):
        raise CgroupError(f"{parent} is not a cgroup v2 directory (no cgroup.controllers and cgroup.procs)")
    child = parent / name
    try:
        os.mkdir(child)
    except FileExistsError as e:
        if exist_ok and is_v2_dir(child):
            return child
        raise CgroupError(f"cannot create cgroup {child}: it already exists") from e
    except OSError as e:
        hint = " (cgroup.max.descendants or cgroup.max.depth reached)" if e.errno == errno.EAGAIN else ""
        raise CgroupError(f"cannot create cgroup {child}: {e.strerror}{hint}") from e
    return child


_MOVE_HINTS = {
    errno.ESRCH: "no such process",
    errno.ENOENT: "no such cgroup",
    errno.EBUSY: "a cgroup with controllers in cgroup.subtree_control cannot hold processes",
    errno.EOPNOTSUPP: "the cgroup is of a type (threaded, domain invalid) that cannot take a whole process",
    errno.EACCES: "moving needs write access to cgroup.procs of both cgroups' common ancestor",
    errno.EPERM: "moving needs write access to cgroup.procs of both cgroups' common ancestor",
}


def move_pid(cgroup: StrPath, pid: int) -> None:
    """Move process `pid` (all its threads) into `cgroup` through cgroup.procs. Its later children stay with it."""
    procs_file = Path(cgroup) / "cgroup.procs"
    # Writing 0 would move the writer itself: never something a caller means by a computed pid.
    if pid <= 0:
        raise CgroupError(f"cannot move pid {pid} into {cgroup}: not a process id")
    try:
        _write(procs_file, str(pid))
    except OSError as e:
        hint = _MOVE_HINTS.get(e.errno or 0, e.strerror or str(e))
        raise CgroupError(f"cannot move pid {pid} into {cgroup}: {hint}") from e


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror or e}") from e


def available_controllers(cgroup: StrPath) -> list[str]:
    """Controllers `cgroup` may enable for its children (cgroup.controllers)."""
    return _read_words(Path(cgroup) / "cgroup.controllers")


def enabled_controllers(cgroup: StrPath) -> list[str]:
    """Controllers enabled for the children of `cgroup` (cgroup.subtree_control)."""
    return _read_words(Path(cgroup) / "cgroup.subtree_control")


def enable_controllers(cgroup: StrPath, controllers: Iterable[str]) -> list[str]:
    """Enable, for the children of `cgroup`, those of `controllers` it has; return which of them are now enabled.

    A controller the parent does not delegate (on this build machine: all but hugetlb) is left out, not an error.
    """
    p = Path(cgroup)
    available = set(available_controllers(p))
    already = set(enabled_controllers(p))
    requested = list(dict.fromkeys(controllers))
    missing = [c for c in requested if c in available and c not in already]
    if missing:
        request = " ".join(f"+{c}" for c in missing)
        try:
            _write(p / "cgroup.subtree_control", request)
        except OSError as e:
            hint = (
                ": it holds processes itself; cgroup v2 allows controllers in subtree_control only on cgroups "
                "without member processes (move them into a leaf first)"
                if e.errno == errno.EBUSY
                else f": {e.strerror or e}"
            )
            raise CgroupError(f"cannot write {request!r} to {p / 'cgroup.subtree_control'}{hint}") from e
    return [c for c in requested if c in available]


def disable_controllers(cgroup: StrPath, controllers: Iterable[str]) -> None:
    """Turn off, for the children of `cgroup`, those of `controllers` that are enabled there.

    The kernel refuses (EBUSY) while a child still enables one of them in its own cgroup.subtree_control: turn
    them off bottom-up.
    """
    p = Path(cgroup)
    enabled = set(enabled_controllers(p))
    request = " ".join(f"-{c}" for c in dict.fromkeys(controllers) if c in enabled)
    if not request:
        return
    try:
        _write(p / "cgroup.subtree_control", request)
    except OSError as e:
        hint = (
            ": a child cgroup still enables it for its own children (turn controllers off bottom-up)"
            if e.errno == errno.EBUSY
            else f": {e.strerror or e}"
        )
        raise CgroupError(f"cannot write {request!r} to {p / 'cgroup.subtree_control'}{hint}") from e


def is_root(cgroup: StrPath) -> bool:
    """True for the root cgroup of the v2 hierarchy: the kernel gives it no cgroup.events. (The root of a cgroup
    namespace's view is not the root: it has cgroup.events, and the rules for non-root cgroups apply to it.)"""
    return not (Path(cgroup) / "cgroup.events").is_file()


def procs(cgroup: StrPath, *, recursive: bool = False) -> list[int]:
    """Pids in cgroup.procs of `cgroup` (and of every cgroup below it when recursive), sorted."""
    top = Path(cgroup)
    dirs = [top]
    if recursive:
        dirs += [Path(d) for d, _, _ in os.walk(top) if Path(d) != top]
    pids: set[int] = set()
    for d in dirs:
        try:
            pids.update(int(w) for w in (d / "cgroup.procs").read_text().split())
        except FileNotFoundError:
            # A sub-cgroup removed between listing and reading is normal; the top one missing is not.
            if d == top:
                raise CgroupError(f"no such cgroup: {top}") from None
        except OSError as e:
            raise CgroupError(f"cannot read {d / 'cgroup.procs'}: {e.strerror or e}") from e
    return sorted(pids)


def read_events(cgroup: StrPath) -> dict[str, int]:
    """cgroup.events as a dict: {"populated": 0|1, "frozen": 0|1}. The root cgroup has no such file."""
    words = _read_words(Path(cgroup) / "cgroup.events")
    return {k: int(v) for k, v in zip(words[::2], words[1::2])}


def is_populated(cgroup: StrPath) -> bool:
    """True while any process lives in `cgroup` or below it."""
    return read_events(cgroup).get("populated", 0) != 0


def wait_event(cgroup: StrPath, key: str, value: int, timeout: float = 5.0) -> bool:
    """Wait until cgroup.events shows `key value` (e.g. populated 0, frozen 1); return whether it did in time."""
    deadline = time.monotonic() + timeout
    while True:
        if read_events(cgroup).get(key) == value:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def set_frozen(cgroup: StrPath, frozen: bool) -> bool:
    """Ask the kernel to freeze (or thaw) `cgroup` and below; False when it has no cgroup.freeze (Linux < 5.2).

    Freezing completes asynchronously: wait_event(cgroup, "frozen", 1) to know when it has.
    """
    f = Path(cgroup) / "cgroup.freeze"
    if not f.exists():
        return False
    try:
        _write(f, "1" if frozen else "0")
    except OSError as e:
        raise CgroupError(f"cannot write {f}: {e.strerror or e}") from e
    return True


def _refuse_if_caller_inside(cgroup: Path, action: str) -> None:
    me = os.getpid()
    if me in procs(cgroup, recursive=True):
        raise CgroupError(f"refusing to {action} {cgroup}: this process ({me}) is inside it")


def kill_members(cgroup: StrPath) -> None:
    """SIGKILL every process in `cgroup` and below: one write to cgroup.kill where the kernel has it (Linux >= 5.14).

    Older kernels get the fallback: freeze (so nothing forks between listing and killing), SIGKILL each member by
    its identity (pid and start time, through a pidfd), thaw; both in the native kill path (`_native.kill_cgroup`).
    Returns without waiting; see wait_event(cgroup, "populated", 0). Refuses (CgroupError) when the caller is a
    member.
    """
    p = Path(cgroup)
    _refuse_if_caller_inside(p, "kill the members of")
    _native.kill_cgroup(str(p))


def _rmdir(path: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # EBUSY: a member or child cgroup is still on its way out; anything else will not go away by waiting.
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {e.strerror or e}") from e
            time.sleep(_POLL_S)


def remove(cgroup: StrPath, *, timeout: float = 10.0) -> bool:
    """Kill what is left in `cgroup`, wait until it is empty, remove it and every cgroup below it (deepest first).

    Returns False when it did not exist. Refuses a root cgroup (no cgroup.events) and a cgroup holding the caller.
    """
    p = Path(cgroup)
    if not p.exists():
        return False
    if is_root(p):
        raise CgroupError(f"refusing to remove {p}: not a non-root cgroup v2 directory (no cgroup.events)")
    deadline = time.monotonic() + timeout
    while True:
        kill_members(p)
        # Rounds of at most half a second: the fallback of kill_members misses processes forked meanwhile.
        if wait_event(p, "populated", 0, timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
            break
        if time.monotonic() >= deadline:
            raise CgroupError(f"cgroup {p} still populated after {timeout:g} s: pids {procs(p, recursive=True)}")
    for dirpath, _, _ in os.walk(p, topdown=False):
        _rmdir(dirpath, deadline)
    return True
