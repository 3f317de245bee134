"""Local files that appear under their final name only when complete, synced and checked: never a half file.

Bytes go to a hidden temporary name in the target's own directory (so the final step is a rename within one file
system, which is atomic), are fsync'ed, and are moved into place only when the caller commits. Anything else (an
exception, a failed check, a crash) leaves at most the hidden temporary, which a failed attempt removes itself.

durable=False skips the fsyncs, for files that need not survive a machine crash: a job's work directory dies with
the job, and syncing a 1 GB input there cost more than the download itself. The rename still makes it atomic.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Optional, Type, Union

from gridpilot.errors import FileAlreadyExists, StorageError, TransferError

StrPath = Union[str, "os.PathLike[str]"]

TEMP_SUFFIX = ".part"


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file being written to `final`; use as a context manager, call commit() when the content is verified.

    Leaving the `with` block without commit() removes the temporary. With overwrite=False (the default) commit()
    refuses to replace an existing file, checked atomically by link(2), not by a racy exists() first.
    """

    def __init__(
        self,
        final: StrPath,
        *,
        overwrite: bool = False,
        make_parents: bool = False,
        op: str = "write",
        se: Optional[str] = None,
        url: Optional[str] = None,
        durable: bool = True,
    ) -> None:
        self.final = Path(final)
        self.overwrite = overwrite
        self.durable = durable
        # How errors name this file: the storage element and PFN when writing a replica, else the local path.
        self._se, self._url, self._op = se, url or str(self.final), op
        if not overwrite and self.final.exists():
            # Early and friendly; commit() checks again atomically.
            raise self._error(FileAlreadyExists, "exists already")
        try:
            if make_parents:
                self.final.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.final.parent, prefix=f".{self.final.name}.", suffix=TEMP_SUFFIX)
        except OSError as e:
            raise self._error(TransferError, f"cannot create a temporary file in {self.final.parent}: {e}") from e
        self.temp = Path(temp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def _error(self, cls: Type[StorageError], what: str) -> StorageError:
        return cls(what, se=self._se, url=self._url, op=self._op)

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise self._error(TransferError, f"writing {self.temp.name} failed: {e}") from e

    def sync(self) -> None:
        """Flush the content (to disk, fsync, when durable) and close the temporary; it can then be re-read."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            if self.durable:
                os.fsync(self._file.fileno())
        except OSError as e:
            raise self._error(TransferError, f"fsync of {self.temp.name} failed: {e}") from e
        finally:
            self._file.close()

    def commit(self) -> None:
        """Sync if not done yet, then move the temporary to the final name."""
        self.sync()
        try:
            if self.overwrite:
                os.replace(self.temp, self.final)
            else:
                # link() fails with EEXIST if the name was taken meanwhile; rename() would silently replace it.
                os.link(self.temp, self.final)
                os.unlink(self.temp)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise self._error(FileAlreadyExists, "exists already") from e
            raise self._error(TransferError, f"cannot move {self.temp.name} into place: {e}") from e
        self._done = True
        if not self.durable:
            return
        try:
            _fsync_dir(self.final.parent)
        except OSError:
            # Some file systems (and tmpfs) refuse fsync on directories; the file itself is already synced.
            pass

    def abort(self) -> None:
        """Remove the temporary; nothing appears under the final name."""
        if self._done:
            return
        self._done = True
        if not self._file.closed:
            self._file.close()
        try:
            self.temp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if not self._done:
            self.abort()
