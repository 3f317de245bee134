"""Real cgroup v2 directories for tests, below this test process's own cgroup."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs

from support.require import require_or_skip

_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_names = itertools.count()


def make_test_cgroup(
    mountinfo: str | Path = cgroupfs.PROC_MOUNTINFO, proc_cgroup: str | Path = cgroupfs.PROC_CGROUP
) -> Path:
    """Make a fresh child of this process's own cgroup v2, or skip (fail under GRIDPILOT_REQUIRE_ALL) saying why not.

    Below our own cgroup, never beside it: the limits the host puts on the test process then bind the test's too.
    """
    prefix = "no writable cgroup v2 hierarchy"
    try:
        parent = cgroupfs.own_v2_dir(mountinfo, proc_cgroup)
    except CgroupError as e:
        require_or_skip(f"{prefix}: {e}")
    if not cgroupfs.is_v2_dir(parent):
        require_or_skip(f"{prefix}: own cgroup {parent} is not a cgroup v2 directory")
    if not cgroupfs.can_make_children(parent):
        require_or_skip(f"{prefix}: own cgroup {parent} is not writable by uid {os.geteuid()}")
    try:
        return cgroupfs.make_child(parent, f"gridpilot-test-{os.getpid()}-{next(_names)}")
    except CgroupError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _NOT_WRITABLE:
            require_or_skip(f"{prefix}: {e}")
        raise
