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

    `line` and `column` are set when the error points into a submitted JDL (code "invalid_jdl").
    """

    def __init__(
        self, status: int, code: str, message: str, *, line: int | None = None, column: int | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line is not None else ""
        return f"central answered {self.status} {self.code}: {self.message}{where}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_central_error, (self.status, self.code, self.message, self.line, self.column))


def _central_error(status: int, code: str, message: str, line: int | None, column: int | None) -> CentralError:
    return CentralError(status, code, message, line=line, column=column)


class CentralUnreachable(GridpilotError):
    """Central could not be reached (connection refused, timeout, DNS), after every retry the call allows."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"central at {self.url} unreachable: {self.reason}"
