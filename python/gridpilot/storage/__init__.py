"""Storage elements (file://, root://) and the staging of a job's inputs and outputs through them.

Every transfer is checksummed on the way and verified; nothing is registered in the catalogue before the storage
element itself has confirmed the copy's size and checksum.

    base.py               the StorageElement interface
    local.py              `file://` storage elements
    xrootd_element.py     `root://` storage elements, over one of two XRootD back ends:
    xrootd_bindings.py      the official Python bindings (PyPI `xrootd`)
    xrootd_commands.py      the xrdcp/xrdfs commands, where the bindings cannot be imported
    xrootd_common.py        what both back ends share
    registry.py           storage elements by name
    catalogue_protocol.py what staging needs from a file catalogue (pilot/staging.py's, over central's HTTP API)
    transfers.py          stage-in and stage-out: the verified copies between storage elements and a work directory
    placement.py          replica order, candidate storage elements, new physical names
    archive.py            zip archives of outputs
    atomic.py             local files that appear only when complete
    checksum.py           adler32 and md5 on the way

The pilot's side of staging (the JDL's files, central's catalogue over HTTP) is pilot/staging.py; the catalogue
itself is central/catalogue.py.
"""

from __future__ import annotations

from gridpilot.storage.base import DirEntry, StorageElement
from gridpilot.storage.catalogue_protocol import Catalogue, FileEntry, Replica
from gridpilot.storage.checksum import Digest
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.registry import Registry, build_registry, load_registry
from gridpilot.storage.transfers import (
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
from gridpilot.storage.xrootd_element import XRootDStorageElement

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
