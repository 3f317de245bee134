"""Every exception gridpilot raises on purpose. The native module raises these same classes (rust/src/py/errors.rs)."""

from __future__ import annotations


class GridpilotError(Exception):
    """Base of all gridpilot errors."""


class NativeError(GridpilotError):
    """An error from the native hot path (gridpilot._native)."""


class NoSuchProcess(NativeError):
    """The process is gone, or its pid now belongs to another process."""

    def __init__(self, msg: str, pid: int | None = None) -> None:
        super().__init__(msg)
        self.pid = pid


class AccessDenied(NativeError):
    """The kernel refused to let us read or signal the process or file."""

    def __init__(self, msg: str, pid: int | None = None) -> None:
        super().__init__(msg)
        self.pid = pid


class ParseError(NativeError):
    """A /proc, /sys or cgroup file (or lspci/cpuinfo text) did not have the expected form."""


class CgroupError(NativeError):
    """A cgroup operation failed (not a cgroup v2 directory, not writable, ...)."""


class ConfigError(GridpilotError):
    """Bad configuration: says which file, line and field."""


class StorageError(GridpilotError):
    """A storage operation failed. Says which storage element, which operation on which URL, and what failed.

    `se` is the storage element's name (None when the failure happened before one was chosen), `url` the physical
    URL or local path involved, `op` the operation (put, get, stat, checksum, delete, list, verify, ...).
    """

    def __init__(self, what: str, *, se: str | None = None, url: str | None = None, op: str | None = None) -> None:
        self.what = what
        self.se = se
        self.url = url
        self.op = op
        super().__init__(self._message())

    def _message(self) -> str:
        where = " ".join(part for part in (self.se, self.op, self.url) if part)
        return f"{where}: {self.what}" if where else self.what


class UnsupportedURL(StorageError):
    """A URL this storage element cannot serve: unknown scheme, malformed, or not under the element's prefix."""


class NoSuchFile(StorageError):
    """The file (or directory) does not exist on the storage element or on the local disk."""


class FileAlreadyExists(StorageError):
    """The target already exists. Replicas are never overwritten: a new copy gets a new physical name."""


class TransferError(StorageError):
    """Reading, writing or talking to the storage element failed (connection refused or lost, I/O error, timeout)."""


class ChecksumUnavailable(StorageError):
    """The storage element cannot compute the requested checksum type."""


class VerificationError(StorageError):
    """Size or checksum of a copy differs from what was expected; the bad copy has been removed (or is named)."""

    def __init__(
        self,
        what: str,
        *,
        se: str | None = None,
        url: str | None = None,
        op: str | None = None,
        removed: bool = True,
    ) -> None:
        self.removed = removed
        super().__init__(what, se=se, url=url, op=op)


class StageInError(StorageError):
    """An input file could not be staged in from any of its replicas (the pilot ends the job as ERROR_IB, INPUT_FILES).

    `lfn` is the logical file name, `attempts` one (storage element, physical URL, error) triple per replica tried,
    in the order tried; it is empty when the catalogue knows no replica or does not know the file. `trace` holds the
    stage-in trace lines up to the failure, for the job's trace.
    """

    def __init__(self, lfn: str, attempts: list[tuple[str, str, str]], reason: str | None = None) -> None:
        self.lfn = lfn
        self.attempts = list(attempts)
        self.trace: list[str] = []
        if reason is None:
            reason = f"all {len(attempts)} replicas failed" if attempts else "no replica"
        tried = "".join(f"; {se} {pfn}: {err}" for se, pfn, err in attempts)
        super().__init__(f"{reason}{tried}", op="stage-in", url=lfn)
