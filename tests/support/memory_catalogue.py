"""An in-memory file catalogue for the staging tests; central's database-backed one replaces it outside tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from gridpilot.storage.catalogue_protocol import FileEntry


class MemoryCatalogue:
    """Implements gridpilot.storage.catalogue_protocol.Catalogue; `fail_register` makes register() raise (a central
    outage)."""

    def __init__(self, entries: tuple[FileEntry, ...] = ()) -> None:
        self.entries: dict[str, FileEntry] = {}
        self.register_calls: list[FileEntry] = []
        self.fail_register = False
        for entry in entries:
            self.entries[entry.lfn] = entry

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        return self.entries.get(lfn)

    def register(self, entry: FileEntry) -> None:
        self.register_calls.append(entry)
        if self.fail_register:
            raise ConnectionError("catalogue unreachable")
        old = self.entries.get(entry.lfn)
        if old is None:
            self.entries[entry.lfn] = entry
            return
        if old.digest.mismatches(entry.digest):
            raise ValueError(f"{entry.lfn}: {entry.digest} differs from the registered {old.digest}")
        self.entries[entry.lfn] = replace(
            old, replicas=old.replicas + tuple(r for r in entry.replicas if r not in old.replicas)
        )
