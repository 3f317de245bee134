"""Output archives: pick a job's files by pattern and zip them, stored (not compressed) when they hold ROOT files.

ROOT files are compressed inside already, and ROOT reads a member of a stored zip in place, without unpacking it
(root://.../out.zip#file.root); deflating them would cost CPU and break that.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

from gridpilot.errors import ConfigError, TransferError


def compression_for(members: Iterable[str]) -> int:
    """ZIP_STORED when any member is a .root file, else ZIP_DEFLATED."""
    return zipfile.ZIP_STORED if any(m.endswith(".root") for m in members) else zipfile.ZIP_DEFLATED


def select_members(workdir: Path, patterns: Sequence[str], exclude: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Files below `workdir` matching any glob pattern (relative, as Path.glob takes them: "*.root", "**/*.log"),
    minus `exclude` (relative names). Returns (non-empty files, empty files), relative POSIX names, sorted."""
    excluded = set(exclude)
    found: set[str] = set()
    for pattern in patterns:
        if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts:
            raise ConfigError(f"archive member pattern {pattern!r} must be relative to the work directory")
        for path in workdir.glob(pattern):
            if path.is_file() and not path.is_symlink():
                found.add(path.relative_to(workdir).as_posix())
    names = sorted(found - excluded)
    full: list[str] = []
    empty: list[str] = []
    for n in names:
        (full if (workdir / n).stat().st_size > 0 else empty).append(n)
    return full, empty


def build_archive(path: Path, workdir: Path, members: Sequence[str]) -> int:
    """Write the zip `path` holding `members` (names relative to `workdir`); returns its compression method.

    Written under a temporary name and renamed, so a half-written archive is never taken for an output.
    """
    method = compression_for(members)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        # allowZip64: outputs over 4 GiB are ordinary on the grid.
        with zipfile.ZipFile(temp, "w", compression=method, allowZip64=True) as zf:
            for name in members:
                zf.write(workdir / name, arcname=name)
        os.replace(temp, path)
    except OSError as e:
        Path(temp).unlink(missing_ok=True)
        raise TransferError(f"cannot build the archive: {e}", url=str(path), op="archive") from e
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return method
