"""Copying a payload's stdout or stderr from a pipe into the work directory, up to a size cap.

The payload writes into a pipe, not straight into the file, so that a payload flooding its output cannot fill the
node's disk through it: the first `limit` bytes are kept, everything after is still read (the payload never blocks on
a full pipe, and never learns that it is capped) but thrown away and counted, for the JobWrapper to trace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path
from typing import Optional

#: Bigger pipe buffers mean fewer wake-ups of the copier while a payload floods (Linux's default is 64 KiB).
#: F_SETPIPE_SZ is in the fcntl module only from Python 3.10; its value is fixed by the kernel ABI.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
_splice = getattr(os, "splice", None)


class CappedCopy:
    """One stream of the payload: a pipe read by a thread, written to `path` up to `limit` bytes (None: no cap).

    Make it before the payload starts (`write_fd` is the payload's end; close it in the parent once the payload has
    it), call `start()`, and `finish()` once every writer is gone.
    """

    def __init__(self, name: str, path: Path, limit: Optional[int]) -> None:
        self.name = name
        self.path = path
        self.limit = limit
        self.kept = 0
        self.discarded = 0
        #: Why the file stopped growing before the cap (a write error such as ENOSPC), if it did.
        self.write_error: Optional[str] = None
        self.read_fd, self.write_fd = os.pipe()
        try:
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size for an unprivileged user: the default size still works
        # Opened here, not in the thread: the file exists (even empty) as soon as the payload does.
        self._out = open(path, "wb", buffering=0)
        self._thread = threading.Thread(target=self._copy, name=f"capture-{name}", daemon=True)

    @property
    def capped(self) -> bool:
        """The cap was reached (and what came after it, if anything, was thrown away)."""
        return self.limit is not None and self.kept >= self.limit and self.discarded > 0

    def start(self) -> None:
        os.close(self.write_fd)
        self.write_fd = -1
        self._thread.start()

    def abandon(self) -> None:
        """The payload never started: close everything."""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self._out.close()

    def finish(self, timeout: float) -> bool:
        """Wait until every writer has closed the pipe and all was copied. False when one still holds it after
        `timeout` seconds (a process that outlived the job's cleanup): the copy then goes on in the background."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _copy(self) -> None:
        try:
            # While there is room, splice(2) moves the bytes from the pipe to the file inside the kernel instead of
            # through Python (a 1 GiB flood, on this loaded 2-core machine: 0.7-2.3 s spliced, 3.3-4.6 s read and
            # written, 0.9-1.1 s written straight to a file). os.splice is Python >= 3.10; older ones read/write.
            if _splice is not None and not self._splice_until_full():
                return
            while True:
                chunk = os.read(self.read_fd, CHUNK)
                if not chunk:
                    return
                self._keep(chunk)
        finally:
            os.close(self.read_fd)
            self._out.close()

    def _splice_until_full(self) -> bool:
        """Splice until EOF (False) or until the cap is reached or splicing fails (True: read on from here)."""
        assert _splice is not None
        out = self._out.fileno()
        while self.limit is None or self.kept < self.limit:
            want = CHUNK if self.limit is None else min(CHUNK, self.limit - self.kept)
            try:
                n = _splice(self.read_fd, out, want)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS):
                    return True  # a file system without splice support: copy through Python instead
                self.write_error = e.strerror or str(e)
                return True
            if n == 0:
                return False
            self.kept += n
        return True

    def _keep(self, chunk: bytes) -> None:
        room = len(chunk) if self.limit is None else max(0, self.limit - self.kept)
        take = min(room, len(chunk)) if self.write_error is None else 0
        written = 0
        view = memoryview(chunk)
        try:
            while written < take:
                written += self._out.write(view[written:take])
        except OSError as e:
            # Disk full, say: the payload goes on, its output is lost from here (and the disk rule will see why).
            self.write_error = e.strerror or str(e)
        self.kept += written
        self.discarded += len(chunk) - written
