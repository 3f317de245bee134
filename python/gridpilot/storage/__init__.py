"""Storage elements (file://, root://) and the staging of a job's inputs and outputs through them.

Every transfer is checksummed on the way and verified; nothing is registered in the catalogue before the storage
element itself has confirmed the copy's size and checksum.
"""

from __future__ import annotations

from gridpilot.storage.base import DirEntry, StorageElement
from gridpilot.storage.catalogue import Catalogue, FileEntry, Replica
from gridpilot.storage.checksum import Digest
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.registry import Registry, build_registry, load_registry
from gridpilot.storage.staging import (
    InputSpec,
    OutputFileResult,
    OutputSpec,
    RemoteFile,
    StagedFile,
    StageInResult,
    StageOutcome,
    StageOutResult,
    stage_in,
    stage_out,
)
from gridpilot.storage.xrootd import XRootDStorageElement

__all__ = [
    "Catalogue",
    "Digest",
    "DirEntry",
    "FileEntry",
    "InputSpec",
    "LocalStorageElement",
    "OutputFileResult",
    "OutputSpec",
    "Registry",
    "RemoteFile",
    "Replica",
    "StagedFile",
    "StageInResult",
    "StageOutcome",
    "StageOutResult",
    "StorageElement",
    "XRootDStorageElement",
    "build_registry",
    "load_registry",
    "stage_in",
    "stage_out",
]
