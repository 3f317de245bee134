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
