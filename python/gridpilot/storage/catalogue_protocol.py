"""What staging needs from a file catalogue, as a small protocol (the catalogue itself is central/catalogue.py).

The pilot implements it over central's HTTP API (pilot/staging.py's CentralCatalogue); tests use an in-memory one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from gridpilot.storage.checksum import Digest


@dataclass(frozen=True)
class Replica:
    """One physical copy of a logical file: the storage element's name and the physical URL on it."""

    se: str
    pfn: str


@dataclass(frozen=True)
class FileEntry:
    """A logical file: its name (LFN), size, checksums (lowercase hex, None when unknown) and replicas."""

    lfn: str
    size: int
    adler32: Optional[str] = None
    md5: Optional[str] = None
    replicas: tuple[Replica, ...] = field(default_factory=tuple)

    @property
    def digest(self) -> Digest:
        return Digest(size=self.size, adler32=self.adler32, md5=self.md5)


class Catalogue(Protocol):
    """The file catalogue as staging sees it."""

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        """The entry of `lfn` with all its replicas, or None when the catalogue does not know it."""
        ...

    def register(self, entry: FileEntry) -> None:
        """Add `entry`'s replicas to `entry.lfn`, creating the LFN if new.

        Staging calls it once per replica, right after that replica was verified on its storage element, so a pilot
        that dies half-way leaves registered only copies that exist and are good. An implementation must refuse
        (raise) a size or checksum that differs from what it already holds for the LFN. It may take as long as the
        catalogue is away (the pilot's waits out an outage); when it raises, staging removes the copy.
        """
        ...
