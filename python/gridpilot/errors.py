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
