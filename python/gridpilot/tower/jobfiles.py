"""A job's files for the offline runner: job.json, and its inputs fetched from storage (or left to ARC's own data
staging), written into the job's directory on the tower before the ARC job is submitted.

Inputs are the JDL's InputFile and InputData entries. Each is looked up in central's catalogue (with the job's
token), and then either
- fetched by the tower into the job's directory, from the first replica that downloads and verifies against the
  catalogue's size and checksums (storage.transfers.stage_in, the pilot's own verified stage-in), to be PUT into
  the ARC session; or
- with the site's `arc_staging`, given to ARC as the URL of a replica on a storage element ARC can reach itself
  (root://, http(s)://); the offline runner checks its size and checksum against job.json all the same.
A `,nodownload` input is fetched like the others: the node has no network to read it remotely from (traced).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import orjson

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, StageInError
from gridpilot.jdl import JobDescription
from gridpilot.storage.catalogue_protocol import FileEntry, Replica
from gridpilot.storage.registry import Registry
from gridpilot.storage.transfers import InputSpec, stage_in
from gridpilot.tower.settings import ARC_STAGING_SCHEMES
from gridpilot.tower.xrsl import JOB_JSON

#: Where the offline runner leaves the outputs, relative to the session (job.json's outputs_dir).
OUTPUTS_DIR = "out"


class JobCatalogue:
    """storage.catalogue_protocol.Catalogue over central, with the job's token (lookups only: the tower registers
    outputs itself, after verifying them on their element, results.py)."""

    def __init__(self, client: CentralClient) -> None:
        self.client = client

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        try:
            d = self.client.lookup_file(lfn)
        except CentralError as e:
            if e.status == 404:
                return None
            raise
        return FileEntry(lfn=d["lfn"], size=int(d["size"]), adler32=d.get("adler32"), md5=d.get("md5"),
                         replicas=tuple(Replica(r["se"], r["pfn"]) for r in d.get("replicas", [])))

    def register(self, entry: FileEntry) -> None:  # pragma: no cover - staging in never registers
        raise NotImplementedError("the tower registers through results.publish_outputs")


@dataclass
class PreparedInputs:
    """The inputs of one job: job.json's entries; the names to PUT into the session; (name, URL) ARC stages."""

    entries: List[Dict[str, Any]] = field(default_factory=list)
    uploads: List[str] = field(default_factory=list)
    arc_staged: List[Tuple[str, str]] = field(default_factory=list)
    trace: List[str] = field(default_factory=list)


def prepare_inputs(job: JobDescription, job_dir: Path, registry: Registry, catalogue: JobCatalogue,
                   close_ses: Sequence[str], *, arc_staging: bool) -> PreparedInputs:
    """Fetch (or hand to ARC) every input; StageInError names the first that cannot be had."""
    out = PreparedInputs()
    entries = [*job.input_file, *job.input_data]
    fetch: List[InputSpec] = []
    for e in entries:
        if e.nodownload:
            out.trace.append(f"stage-in {e.path}: nodownload, but the node has no network: fetched by the tower")
        if arc_staging:
            entry = catalogue.lookup(e.path)
            url = _arc_reachable(entry)
            if entry is not None and url is not None:
                name = posixpath.basename(e.path)
                out.arc_staged.append((name, url))
                out.entries.append(_entry(name, entry))
                out.trace.append(f"stage-in {e.path}: staged by the ARC CE from {url}")
                continue
        fetch.append(InputSpec(e.path))
    if fetch:
        result = stage_in(fetch, job_dir, registry, catalogue, close_ses)
        out.trace.extend(result.trace)
        for f in result.files:
            name = f.path.name
            out.uploads.append(name)
            out.entries.append({"name": name, "lfn": f.lfn, "size": f.digest.size, "adler32": f.digest.adler32,
                                "md5": f.digest.md5})
    names = [e["name"] for e in out.entries]
    if len(set(names)) != len(names):
        raise StageInError(entries[0].path if entries else "", [], f"two inputs share a file name: {names}")
    return out


def _arc_reachable(entry: Optional[FileEntry]) -> Optional[str]:
    if entry is None:
        return None
    return next((r.pfn for r in entry.replicas if r.pfn.startswith(ARC_STAGING_SCHEMES)), None)


def _entry(name: str, entry: FileEntry) -> Dict[str, Any]:
    return {"name": name, "lfn": entry.lfn, "size": entry.size, "adler32": entry.adler32, "md5": entry.md5}


def job_json(*, job_id: int, resubmission: int, jdl: str, user: str, site: str, ce: str,
             inputs: Sequence[Dict[str, Any]], output_dir: Optional[str] = None) -> bytes:
    """job.json as the offline runner reads it (format 1); `output_dir` the catalogue directory central's match
    gave (the LFNs of the outputs are under it)."""
    doc: Dict[str, Any] = {"format": 1, "job_id": job_id, "resubmission": resubmission, "jdl": jdl, "user": user,
                           "site": site, "ce": ce, "inputs": list(inputs), "outputs_dir": OUTPUTS_DIR}
    if output_dir:
        doc["output_dir"] = output_dir
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def write_job_json(job_dir: Path, data: bytes) -> Path:
    path = job_dir / JOB_JSON
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


__all__ = ["JobCatalogue", "OUTPUTS_DIR", "PreparedInputs", "job_json", "prepare_inputs", "write_job_json"]
