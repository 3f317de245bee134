"""Files and directories only their owner may read: central's token signing key and database, tokens, and the CE's
pilot directories, token files and start-up scripts.

Each is created with its final mode in the open()/mkdir() call itself, so it is never wider than that, not even
for an instant, whatever the umask; then the mode is set exactly (fchmod), because a umask can also make it narrower
than the owner needs. An existing one that is wider is narrowed when it is ours, and said in a warning when it is
not ours to change.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import uuid
from pathlib import Path
from typing import Optional, Union

#: A directory holding secrets: its owner only.
DIR_MODE = 0o700
#: A file holding a secret: its owner reads and writes it, nobody else sees it.
FILE_MODE = 0o600
#: What a secret may never grant: any permission of the group or of others.
_OTHERS = 0o077

log = logging.getLogger("gridpilot.private_files")

PathLike = Union[str, "os.PathLike[str]"]


def keep_private(path: PathLike) -> None:
    """Take every group and other permission off `path` (a file or a directory) when it has any and is ours; when
    it is not ours, leave it and log a warning that says so and what to do."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _OTHERS:
        return
    if st.st_uid == os.geteuid():
        os.chmod(path, mode & ~_OTHERS)
        return
    log.warning("%s is mode %04o and owned by uid %d, not by this user (uid %d): other users may read the secrets "
                "in it; its owner should run `chmod go= %s`", path, mode, st.st_uid, os.geteuid(), path)


def make_private_dir(path: PathLike) -> Path:
    """`path` as a directory only its owner can enter: made 0700 when missing (missing parents as usual), narrowed
    when it exists and is wider (see keep_private). Returns it as a Path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(p, DIR_MODE)
    except FileExistsError:
        if not p.is_dir():
            raise NotADirectoryError(20, "exists and is not a directory", str(p)) from None
        keep_private(p)
        return p
    os.chmod(p, DIR_MODE)
    return p


def _owner_ids(user: Optional[str]) -> Optional[tuple]:
    if user is None:
        return None
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def write_private(path: PathLike, data: Union[str, bytes], *, mode: int = FILE_MODE, owner: Optional[str] = None,
                  exclusive: bool = False) -> None:
    """Write `data` to `path`, readable by its owner only (`mode` must grant the group and others nothing).

    `exclusive`: `path` must not exist yet (FileExistsError), nor be a planted link. Otherwise the file is written
    under a temporary name next to it and renamed over it, so a reader sees the old contents or the new, whole.
    `owner`: the user name the file is given to (needs the privilege to chown). A missing parent directory is
    made 0700; an existing one is left as it is.
    """
    if mode & _OTHERS:
        raise ValueError(f"mode {mode:04o} is not private")
    target = Path(path)
    if not target.parent.exists():
        make_private_dir(target.parent)
    ids = _owner_ids(owner)
    body = data.encode() if isinstance(data, str) else data
    tmp = target if exclusive else target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if ids is not None:
                os.fchown(fd, *ids)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(tmp, target)
    except BaseException:
        if not exclusive:
            tmp.unlink(missing_ok=True)
        raise


def ensure_private_file(path: PathLike) -> None:
    """`path` exists and only its owner may read it: created empty with FILE_MODE when missing (so that a program
    that opens it next, such as SQLite, finds it private), narrowed when it exists and is wider."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        keep_private(path)
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def exposure(mode: int) -> Optional[str]:
    """What is wrong with a secret's file of this st_mode, or None: any permission of the group or of others makes a
    key or token as good as published. The words every reader of a secret (the tower's settings, the ARC backend,
    the ARC REST client) puts after the file's name, before refusing it."""
    if mode & _OTHERS:
        return f"is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    return None


__all__ = ["DIR_MODE", "FILE_MODE", "ensure_private_file", "exposure", "keep_private", "make_private_dir",
           "write_private"]
