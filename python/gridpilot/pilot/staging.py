"""The JobWrapper's side of staging: central's catalogue over HTTP (with the job token), the storage elements central
lists, and the JDL's inputs and outputs turned into what gridpilot.storage.staging moves and verifies."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, ConfigError, StageInError, StorageError
from gridpilot.jdl import JobDescription
from gridpilot.states import JobStatus
from gridpilot.storage.archive import select_members
from gridpilot.storage.catalogue import FileEntry, Replica
from gridpilot.storage.registry import Registry, build_registry
from gridpilot.storage.staging import InputSpec, OutputSpec, StageOutcome, stage_in, stage_out

__all__ = ["StageInError", "Stager", "CentralCatalogue"]


class CentralCatalogue:
    """gridpilot.storage.catalogue.Catalogue over central's HTTP API, as the job (its token) sees it."""

    def __init__(self, client: CentralClient, job_id: int) -> None:
        self.client = client
        self.job_id = job_id

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        try:
            d = self.client.lookup_file(lfn)
        except CentralError as e:
            if e.status == 404:
                return None
            raise StageInError(lfn, [], f"catalogue lookup failed: {e}") from e
        return FileEntry(
            lfn=d["lfn"],
            size=int(d["size"]),
            adler32=d.get("adler32"),
            md5=d.get("md5"),
            replicas=tuple(Replica(r["se"], r["pfn"]) for r in d.get("replicas", [])),
        )

    def register(self, entry: FileEntry) -> None:
        for r in entry.replicas:
            self.client.register_file(
                lfn=entry.lfn, size=entry.size, adler32=entry.adler32, md5=entry.md5, se=r.se, pfn=r.pfn,
                job_id=self.job_id,
            )


def _output_specs(specs: Sequence[Any], registry: Registry, workdir: Path, exclude: Sequence[str] = (),
                  trace: Callable[[str], None] = lambda line: None) -> List[OutputSpec]:
    """The JDL's parsed output entries in the form the storage layer takes. A plain-file pattern ("skim*.root",
    as AliDPG's skimming JDL has) stands for the files it matches in the work directory, as it does for AliEn and
    JAliEn: none is no error (only a name without a pattern must exist; traced), and a file two patterns match
    goes once. `exclude`: work directory files no pattern takes (the staged-in inputs, as for archives)."""
    out: List[OutputSpec] = []
    taken: Set[str] = set()
    for spec in specs:
        members = tuple(spec.members)
        ses = tuple(s for s in spec.ses if s in registry)
        replicas = max(1, sum(spec.qos.values()) + len(spec.ses)) if (spec.qos or spec.ses) else max(1, spec.replicas)
        if spec.archive is not None:
            out.append(OutputSpec(spec.archive, members, replicas, ses))
            continue
        for m in members:
            names = [m]
            if any(c in m for c in "*?["):
                full, empty = select_members(workdir, [m], exclude=exclude)
                names = full + empty
                if not names:
                    trace(f"stage-out {m}: no file matches, nothing to upload for it")
            for name in names:
                if name not in taken:
                    taken.add(name)
                    out.append(OutputSpec(name, (), replicas, ses))
    return out


class Stager:
    """Stage-in and stage-out of one job."""

    def __init__(self, handover: Dict[str, Any], workdir: Path, trace: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.trace = trace
        self.job_id = int(handover["job_id"])
        self.client = CentralClient(handover["central_url"], handover["token"], timeout=30.0, retries=3,
                                    ca_data=handover.get("ca_pem"))
        self.catalogue = CentralCatalogue(self.client, self.job_id)
        self.output_dir = handover.get("output_dir") or f"/gridpilot/jobs/{self.job_id}"
        elements = handover.get("storage")
        if elements is None:
            elements = self.client.storage_elements()
        self.close = [e["name"] for e in elements if e.get("close")] or list(handover.get("close_se") or [])
        try:
            self.registry = build_registry([{k: e[k] for k in ("name", "url") if k in e} for e in elements], "central's storage elements")
        except ConfigError as e:
            self.trace(f"storage elements from central unusable: {e}")
            self.registry = Registry()
        self.staged: List[str] = []

    def stage_in(self, job: JobDescription) -> None:
        specs = [InputSpec(e.path, e.nodownload) for e in (*job.input_file, *job.input_data)]
        if not specs:
            return
        try:
            result = stage_in(specs, self.workdir, self.registry, self.catalogue, self.close)
        except StageInError as e:
            for line in getattr(e, "trace", []) or []:
                self.trace(line)
            raise
        for line in result.trace:
            self.trace(line)
        self.staged = [f.path.name for f in result.files]
        if result.remote:
            # The payload reads nodownload inputs remotely; it finds their replicas in this file.
            with open(self.workdir / "nodownload.txt", "w") as f:
                for r in result.remote:
                    f.write(f"{r.lfn} {' '.join(rep.pfn for rep in r.replicas)}\n")

    def fetch_executable(self, lfn: str, dest: Path) -> None:
        """The JDL's Executable is a catalogue entry (as ALICE's /alice/bin/... are): fetch it like an input."""
        if not lfn.startswith("/"):
            raise StageInError(lfn, [], "the executable is neither a local file, a command on PATH, nor an LFN")
        result = stage_in([InputSpec(lfn)], self.workdir, self.registry, self.catalogue, self.close)
        for line in result.trace:
            self.trace(line)
        got = result.files[0].path
        if got != dest:
            os.replace(got, dest)

    def stage_out(self, job: JobDescription, *, error: bool) -> JobStatus:
        """Upload and register the outputs (OutputErrorE after a failure). The job state the outcome means."""
        specs = job.output_error_e if error else job.outputs
        try:
            outputs = _output_specs(specs, self.registry, self.workdir, exclude=self.staged, trace=self.trace)
        except ConfigError as e:
            self.trace(f"stage-out failed: {e}")
            return JobStatus.ERROR_SV
        if not outputs:
            return JobStatus.DONE
        if not error:
            missing = [o.name for o in outputs if not o.is_archive and not (self.workdir / o.name).is_file()]
            if missing:
                self.trace(f"[FATAL]: required output file(s) missing: {', '.join(missing)}")
                return JobStatus.ERROR_S
        if len(self.registry) == 0:
            self.trace("stage-out: central lists no storage element")
            return JobStatus.ERROR_SV
        try:
            result = stage_out(outputs, self.workdir, self.output_dir, self.registry, self.catalogue, self.close,
                               exclude=self.staged)
        except (ConfigError, StorageError) as e:
            self.trace(f"stage-out failed: {e}")
            return JobStatus.ERROR_SV
        for line in result.trace:
            self.trace(line)
        if not result.files:
            return JobStatus.DONE
        return {
            StageOutcome.COMPLETE: JobStatus.DONE,
            StageOutcome.PARTIAL: JobStatus.DONE_WARN,
            StageOutcome.FAILED: JobStatus.ERROR_SV,
        }[result.outcome]
