"""From text or a file to a checked JobDescription: the entry points most callers want."""

from __future__ import annotations

import os
from typing import Optional, Union

from gridpilot.errors import JdlError
from gridpilot.jdl.model import JobDescription
from gridpilot.jdl.nodes import JdlDocument
from gridpilot.jdl.parser import parse

PathLike = Union[str, "os.PathLike[str]"]


def parse_job(text: str, path: Optional[str] = None) -> JobDescription:
    """Parse and check JDL text. Raises JdlError (naming `path` when given), never anything else."""
    doc = parse(text, path)
    try:
        return JobDescription.from_document(doc)
    except JdlError as e:
        raise (e.with_path(path) if path is not None else e) from None


def decode(data: bytes, path: Optional[str] = None) -> str:
    """JDL bytes as text (UTF-8). Raises JdlError at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        message = f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot start or continue a character"
        raise JdlError(message, line, column, path) from None


def load_document(path: PathLike) -> JdlDocument:
    """Read and parse a JDL file. OSError when it cannot be read; JdlError when it is not valid JDL."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    return parse(decode(data, name), name)


def load(path: PathLike) -> JobDescription:
    """Read, parse and check a JDL file. OSError when it cannot be read; JdlError when it is not a valid job."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    return parse_job(decode(data, name), name)
