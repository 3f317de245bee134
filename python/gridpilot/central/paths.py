"""Catalogue paths: the one spelling of an LFN or directory central stores and compares (catalogue.py, areas.py)."""

from __future__ import annotations

from typing import Any, Optional

from gridpilot.central import bounds

MAX_LFN = bounds.MAX_LFN


def normalize_path(path: Any, what: str = "lfn", field: Optional[str] = None) -> str:
    """An absolute catalogue path without '.', '..', empty parts or a trailing '/' ("/" itself allowed). A bad one is
    a 400 naming `field` (default: `what`)."""
    field = what if field is None else field
    if not isinstance(path, str) or not path.startswith("/"):
        raise bounds.bad_field(field, f"{what} must be an absolute path starting with '/'")
    if len(path) > MAX_LFN or any(ch in path for ch in "\0\n\r"):
        raise bounds.bad_field(field, f"{what} must be at most {MAX_LFN} characters without NUL or line breaks")
    if path == "/":
        return path
    parts = path[1:].rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bounds.bad_field(field, f"{what} {path!r} has an empty, '.' or '..' component")
    return "/" + "/".join(parts)


def parent_of(lfn: str) -> str:
    head = lfn.rsplit("/", 1)[0]
    return head or "/"


def is_under(lfn: str, directory: str) -> bool:
    """`lfn` lies strictly below `directory` (both normalized)."""
    return directory == "/" or lfn.startswith(directory.rstrip("/") + "/")


def is_within(path: str, directory: str) -> bool:
    """`path` is `directory` or lies below it (both normalized)."""
    return path == directory or is_under(path, directory)


__all__ = ["MAX_LFN", "is_under", "is_within", "normalize_path", "parent_of"]
