"""Which gridpilot installation a pilot of each shape runs: the version the site pins (`pilot_version`: "latest" or
"X.Y.Z"), independently of the CE's own, for the shape's architecture (docs/wheels.md, "Pilot versions").

Three ways to say where the installations are, one at a time:

- `install_path`: one installation (as before issue 20), `{arch}` in it replaced by the shape's arch;
- `install_paths`: {version: path}, each path may hold `{arch}`; "latest" is the highest version of the map;
- `pilot_tree`: a CVMFS tree as tools/cvmfs_tree.py lays it out, `<root>/<version>/<arch>/bin/gridpilot`;
  "latest" is what the tree's `<root>/latest` link names (the publisher's choice), else its highest version.

The tree and the map are read at every resolution, not once: a version published (or withdrawn) on CVMFS is seen at
the next cycle without restarting the CE. A version or an arch that is not there is a MissingInstall naming the
setting to change; the factory then submits nothing for that shape (rather than another version) until it is back.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from gridpilot.ce.backend import SHAPE_ARCHES as ARCHES

#: What the pilots may be pinned to besides a version.
LATEST = "latest"
#: A version as a directory of the tree spells it (tools/cvmfs_tree.py's own rule), or a key of install_paths.
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+_-]{0,63}$")
#: Where a path names the shape's arch.
ARCH_FIELD = "{arch}"
LAUNCHER = os.path.join("bin", "gridpilot")


class MissingInstall(Exception):
    """No installation of the pinned version for this arch: the message names what is missing; `field` is what to
    change: "pilot_version" (no such version) or "arch" (the version lacks this arch)."""

    def __init__(self, message: str, field: str, version: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field
        #: The version that lacks the arch (field "arch").
        self.version = version


@dataclass(frozen=True)
class Installation:
    """A resolved installation: the pilots run `<path>/bin/gridpilot`."""

    path: str
    #: The version it is (None when install_path alone says where, without a version).
    version: Optional[str]
    arch: str

    def label(self) -> str:
        return f"{self.version or 'unversioned'} {self.arch} at {self.path}"


def version_key(v: str) -> Tuple[Tuple[int, object], ...]:
    """Orders versions as numbers where they are (0.10.0 after 0.9.0); tools/cvmfs_tree.py's own order."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+_-]", v))


def valid_version(v: object) -> bool:
    return isinstance(v, str) and VERSION_RE.match(v) is not None and v != LATEST


def this_arch() -> str:
    """The CE machine's arch: what a shape without `arch` runs on (a site of one arch)."""
    return platform.machine()


def _runnable(path: str) -> bool:
    return os.access(os.path.join(path, LAUNCHER), os.X_OK)


class Installations:
    """Resolves (pinned version, shape arch) to an installation path, from one of the three settings."""

    def __init__(self, *, install_path: str, install_paths: Optional[Mapping[str, str]] = None,
                 pilot_tree: Optional[str] = None, pilot_version: Optional[str] = None) -> None:
        self.install_path = install_path
        self.install_paths: Dict[str, str] = dict(install_paths or {})
        self.pilot_tree = pilot_tree
        self.pilot_version = pilot_version or LATEST

    @property
    def source(self) -> str:
        """The setting the installations come from."""
        if self.pilot_tree:
            return "pilot_tree"
        if self.install_paths:
            return "install_paths"
        return "install_path"

    def versions(self, arch: Optional[str] = None) -> List[str]:
        """The versions on offer (with `arch`: those that have it), lowest first."""
        if self.pilot_tree:
            try:
                names = os.listdir(self.pilot_tree)
            except OSError:
                return []
            found = [n for n in names if valid_version(n) and not os.path.islink(os.path.join(self.pilot_tree, n))
                     and os.path.isdir(os.path.join(self.pilot_tree, n))
                     and (arch is None or _runnable(os.path.join(self.pilot_tree, n, arch)))]
        else:
            found = [v for v, p in self.install_paths.items() if arch is None or _runnable(p.replace(ARCH_FIELD, arch))]
        return sorted(found, key=version_key)

    def latest(self) -> Optional[str]:
        """The version "latest" means now: the tree's `latest` link, else the highest version on offer."""
        if self.pilot_tree:
            link = os.path.join(self.pilot_tree, LATEST)
            if os.path.islink(link):
                target = os.readlink(link).rstrip("/")
                # Only a sibling version directory: a link leading elsewhere is not a version of this tree.
                return target if valid_version(target) and os.sep not in target else None
        offered = self.versions()
        return offered[-1] if offered else None

    def resolve(self, arch: Optional[str]) -> Installation:
        """The installation a pilot of a shape of this arch (None: the CE's) runs; MissingInstall when the pinned
        version has none for it."""
        arch = arch or this_arch()
        if self.source == "install_path":
            # Not checked: the nodes may mount what the CE does not (as before several versions were offered).
            return Installation(self.install_path.replace(ARCH_FIELD, arch), None, arch)
        version = self.pilot_version
        if version == LATEST:
            found = self.latest()
            if found is None:
                raise MissingInstall(f"pilot_version latest: {self.source} {self._where()} offers no version",
                                     "pilot_version")
            version = found
        if self.pilot_tree:
            path = os.path.join(self.pilot_tree, version, arch)
            where = f"pilot_tree {self.pilot_tree}"
            if not os.path.isdir(os.path.join(self.pilot_tree, version)):
                raise MissingInstall(self._missing(version, None, f"{where} has no version {version}"),
                                     "pilot_version")
        else:
            if version not in self.install_paths:
                raise MissingInstall(self._missing(version, None, f"install_paths has no version {version}"),
                                     "pilot_version")
            path = self.install_paths[version].replace(ARCH_FIELD, arch)
            where = f"install_paths[{version}] {path}"
        if not _runnable(path):
            raise MissingInstall(self._missing(version, arch, f"{where}: no {arch} installation "
                                                              f"({os.path.join(path, LAUNCHER)} is missing)"), "arch", version)
        return Installation(path, version, arch)

    def _where(self) -> str:
        return self.pilot_tree or ", ".join(sorted(self.install_paths))

    def _missing(self, version: str, arch: Optional[str], what: str) -> str:
        pinned = "pilot_version latest" if self.pilot_version == LATEST else f"pilot_version {version}"
        offered = self.versions(arch)
        return (f"{pinned}: {what} (offered{' for ' + arch if arch else ''}: {', '.join(offered) or 'none'}); "
                "no pilot of another version is submitted instead")

    def describe(self, arch: Optional[str]) -> str:
        """One line for `gridpilot ce`'s start: what a shape of this arch runs, or why it runs nothing."""
        try:
            return self.resolve(arch).label()
        except MissingInstall as e:
            return f"nothing ({e})"


__all__ = ["ARCHES", "ARCH_FIELD", "Installation", "Installations", "LATEST", "MissingInstall", "valid_version",
           "version_key"]
