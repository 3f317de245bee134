"""The JobWrapper's catalogue and storage when it runs offline (`gridpilot offline`, pilot/offline.py): no central,
no storage element, only the job's directory.

The inputs are already in that directory (the tower put them there) and job.json lists each with its LFN, size and
checksums: `OfflineCatalogue.lookup` answers from that list, with one replica on the `file://` storage element
INPUTS_SE that is the job directory itself, so the ordinary stage-in (storage/transfers.py) copies each into the work
directory and verifies it against the listed size and checksums, as it would a download. The outputs go, through
the ordinary stage-out, onto OUTPUTS_SE, the `file://` element that is the job's outputs directory; each verified copy
is "registered" by telling the JobAgent (`register`), which lists it in result.json for the tower to upload and
verify again on a real storage element before the real registration.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from gridpilot.storage.catalogue_protocol import FileEntry, Replica

#: The storage element that is the job directory (where the inputs are) and the one that is its outputs directory.
INPUTS_SE = "OFFLINE::INPUTS"
OUTPUTS_SE = "OFFLINE::OUTPUTS"


def storage_elements(job_dir: str, outputs_dir: str) -> List[Dict[str, Any]]:
    """The storage list handed to the JobWrapper (Handover.storage): the outputs element is the only close one, so
    every output goes there; both are bound into a container at the same path (isolation/containers.py)."""
    return [{"name": INPUTS_SE, "url": f"file://{job_dir}"},
            {"name": OUTPUTS_SE, "url": f"file://{outputs_dir}", "close": True}]


class OfflineCatalogue:
    """storage.catalogue_protocol.Catalogue over the inputs job.json lists ({lfn, pfn, size, adler32, md5}), whose
    registrations go to `register` (a dict: lfn, size, adler32, md5, se, pfn)."""

    #: As CentralCatalogue's: nobody can refuse a registration because the job was killed here.
    killed = False

    def __init__(self, inputs: Sequence[Mapping[str, Any]], register: Callable[[Dict[str, Any]], None]) -> None:
        self._inputs = {str(i["lfn"]): i for i in inputs}
        self._register = register

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        item = self._inputs.get(lfn)
        if item is None:
            return None
        return FileEntry(lfn=lfn, size=int(item["size"]), adler32=item.get("adler32"), md5=item.get("md5"),
                         replicas=(Replica(INPUTS_SE, str(item["pfn"])),))

    def register(self, entry: FileEntry) -> None:
        for r in entry.replicas:
            self._register({"lfn": entry.lfn, "size": entry.size, "adler32": entry.adler32, "md5": entry.md5,
                            "se": r.se, "pfn": r.pfn})


__all__ = ["INPUTS_SE", "OUTPUTS_SE", "OfflineCatalogue", "storage_elements"]
