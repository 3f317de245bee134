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


class JdlError(GridpilotError):
    """A job description (JDL) that cannot be read or is not valid.

    `line` and `column` count from 1 (they are 0 only when a helper such as parse_output_spec checks a string
    that has no place in a file); `path` is the file, when there is one. `message` says what was expected,
    e.g. "unclosed string starting at line 4, column 12". str() gives "path:line:column: message".
    """

    def __init__(self, message: str, line: int, column: int, path: str | None = None) -> None:
        super().__init__(message, line, column, path)
        self.message = message
        self.line = line
        self.column = column
        self.path = path

    def with_path(self, path: str) -> JdlError:
        """The same error, naming the file it came from."""
        return JdlError(self.message, self.line, self.column, path)

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.path}:{self.line}:{self.column}: {self.message}"
        return f"line {self.line}, column {self.column}: {self.message}"


class IllegalTransition(GridpilotError):
    """A job state change that the transition table in gridpilot.states does not allow."""

    def __init__(self, old: object, new: object, reason: str = "") -> None:
        old_name = getattr(old, "name", str(old))
        new_name = getattr(new, "name", str(new))
        msg = f"illegal job state transition {old_name} -> {new_name}"
        super().__init__(f"{msg}: {reason}" if reason else msg)
        self.old = old
        self.new = new
        self.reason = reason

    def __reduce__(self) -> tuple[type[IllegalTransition], tuple[object, object, str]]:
        return (IllegalTransition, (self.old, self.new, self.reason))


class CentralError(GridpilotError):
    """Central answered with an error: the HTTP status, the error code and message from its JSON body.

    `line` and `column` are set when the error points into a submitted JDL (code "invalid_jdl"); `retry_after` (seconds)
    when central (or a proxy) said when to try again (its Retry-After header: 429, 503).
    """

    def __init__(
        self, status: int, code: str, message: str, *, line: int | None = None, column: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.line = line
        self.column = column
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line is not None else ""
        return f"central answered {self.status} {self.code}: {self.message}{where}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_central_error, (self.status, self.code, self.message, self.line, self.column, self.retry_after))


def _central_error(status: int, code: str, message: str, line: int | None, column: int | None,
                   retry_after: float | None = None) -> CentralError:
    return CentralError(status, code, message, line=line, column=column, retry_after=retry_after)


class CentralUnreachable(GridpilotError):
    """Central could not be reached (connection refused, timeout, DNS), after every retry the call allows."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"central at {self.url} unreachable: {self.reason}"


class CentralUntrusted(CentralUnreachable):
    """Central answered over https with a certificate that does not verify against the CA the client trusts (wrong
    or missing CA bundle, another host's name, expired). A CentralUnreachable, so whoever waits out an outage waits
    this out too; it is never retried within one call."""

    def __str__(self) -> str:
        return f"central at {self.url} not trusted: {self.reason}"


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


class BatchError(GridpilotError):
    """A batch system refused or failed a request of the computing element (sbatch, squeue, scancel, a schedd).

    str() names the command (or call) and what the batch system said."""
