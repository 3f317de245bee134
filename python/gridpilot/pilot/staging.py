"""The JobWrapper's side of staging: central's catalogue over HTTP (with the job token), the storage elements central
lists, and the JDL's inputs and outputs turned into what gridpilot.storage.transfers moves and verifies.

Central being away is not a reason to lose a job: a catalogue call that gets no answer (or a 5xx) is tried again
with capped, jittered backoff for as long as the job may still be saved, so an output uploaded during an outage
stays on its storage element, unregistered, until central is back to register it. The wait ends only when central
has given the job up or soon will: it refuses the job token (4xx: killed and ended, resubmitted, expired), the
token's own expiry has passed, the JobWrapper was told to stop (the job was killed, or the slot is ending and the
batch system kills everything soon), or the upload grace after a limit kill is over (pilot/killupload.py). Staging
then removes the copy it could not register.

A central that keeps failing (5xx) on one call while its health check answers is not away: it fails on that call
(a bug), and waiting would hold the job for a day. After SERVER_ERRORS_LIMIT such failures in a row the call gives
up as if refused; a central failing on everything (its database down) fails its health check too, and is waited for.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, TypeVar, Union

from gridpilot.client import CentralClient, token_expires
from gridpilot.errors import CentralError, CentralUnreachable, ConfigError, GridpilotError, StageInError, StorageError
from gridpilot.jdl import JobDescription, datalist
from gridpilot.pilot import inputlist, killupload
from gridpilot.pilot.offlinecatalogue import OfflineCatalogue
from gridpilot.pilot.protocol import Handover
from gridpilot.reachability import UNAVAILABLE_STATUSES, Backoff, duration
from gridpilot.states import JobStatus
from gridpilot.storage.archive import select_members
from gridpilot.storage.catalogue_protocol import FileEntry, Replica
from gridpilot.storage.registry import Registry, build_registry
from gridpilot.storage.transfers import InputSpec, OutputSpec, StagedFile, StageOutcome, stage_in, stage_out

#: The code of central's refusal to register a file for a killed job (central/catalogue.py register_file).
JOB_KILLED = "job_killed"
#: The stage-out's last line when central refused a registration because the job was killed.
KILLED_AT_REGISTRATION = "central refused a registration: the job was killed; nothing more is uploaded"

__all__ = ["JOB_KILLED", "KILLED_AT_REGISTRATION", "CatalogueGivenUp", "CentralCatalogue", "StageInError", "Stager"]

T = TypeVar("T")

#: The first wait after a catalogue call central did not answer, and the longest: a job waiting to register its
#: outputs asks again within this long of central's return; jitter keeps a site's wrappers from coming back at once.
WAIT_BASE_S = 1.0
WAIT_MAX_S = 15.0
#: How often a wait looks whether it should end (SIGTERM, the token's expiry) while it sleeps.
WAIT_SLICE_S = 0.25
#: 5xx answers in a row to one call after which central's health check decides: answered, the call gives up.
SERVER_ERRORS_LIMIT = 10


class CatalogueGivenUp(GridpilotError):
    """A catalogue call that waited for central and stopped: central refused the job, or will (the reason)."""


class CentralCatalogue:
    """storage.catalogue_protocol.Catalogue over central's HTTP API, as the job (its token) sees it, waiting out
    central's outages (see the module's doc): `trace` gets a line when a call starts waiting and when it ends;
    `give_up` says why to stop waiting (None: keep waiting), asked after each try that got no answer and while
    sleeping between tries."""

    def __init__(self, client: CentralClient, job_id: int, *, trace: Callable[[str], None] = lambda _: None,
                 give_up: Callable[[], Optional[str]] = lambda: None, wait_base_s: float = WAIT_BASE_S,
                 wait_max_s: float = WAIT_MAX_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.job_id = job_id
        self.trace = trace
        self.give_up = give_up
        self.wait_base_s = wait_base_s
        self.wait_max_s = wait_max_s
        self.clock = clock
        self.sleep = sleep
        #: Central refused a registration because the job was killed (409 job_killed): the kill reached central
        #: before the pilot learned of it, and nothing more is to be uploaded.
        self.killed = False

    def lookup(self, lfn: str) -> Optional[FileEntry]:
        try:
            d = self._patiently(f"catalogue lookup of {lfn}", lambda: self.client.lookup_file(lfn))
        except CentralError as e:
            if e.status == 404:
                return None
            raise StageInError(lfn, [], f"catalogue lookup failed: {e}") from e
        except CatalogueGivenUp as e:
            raise StageInError(lfn, [], str(e)) from e
        return FileEntry(
            lfn=d["lfn"],
            size=int(d["size"]),
            adler32=d.get("adler32"),
            md5=d.get("md5"),
            replicas=tuple(Replica(r["se"], r["pfn"]) for r in d.get("replicas", [])),
        )

    def register(self, entry: FileEntry) -> None:
        # Repeating a registration whose answer was lost is harmless: central keeps one replica per (LFN, SE).
        for r in entry.replicas:
            call = functools.partial(self.client.register_file, lfn=entry.lfn, size=entry.size,
                                     adler32=entry.adler32, md5=entry.md5, se=r.se, pfn=r.pfn, job_id=self.job_id)
            try:
                self._patiently(f"registration of {entry.lfn} ({r.se} {r.pfn})", call,
                                meanwhile="the uploaded copy stays on its storage element meanwhile")
            except CentralError as e:
                # Traced by the stager, after the transfer lines that say which registration it was.
                self.killed = self.killed or e.code == JOB_KILLED
                raise

    def _patiently(self, what: str, call: Callable[[], T], meanwhile: str = "") -> T:
        """`call()`'s answer, tried until central gives one: CentralError for a refusal (4xx), CatalogueGivenUp when
        give_up() says to stop waiting."""
        backoff = Backoff(self.wait_base_s, self.wait_max_s)
        since: Optional[float] = None
        server_errors = 0
        while True:
            try:
                answer = call()
            except CentralUnreachable as e:
                why, server_errors = str(e), 0
            except CentralError as e:
                if e.status < 500:
                    raise
                why = str(e)
                if e.status not in UNAVAILABLE_STATUSES:
                    server_errors += 1
                    if server_errors >= SERVER_ERRORS_LIMIT and self._central_answers():
                        raise CatalogueGivenUp(f"{what}: central failed on it {server_errors} times in a row while "
                                               f"answering its health check: {why}") from e
            else:
                if since is not None:
                    self.trace(f"{what}: central answered after {duration(self.clock() - since)} of waiting")
                return answer
            if since is None:
                since = self.clock()
                self.trace(f"{what} waits for central, retried with backoff up to {self.wait_max_s:.0f} s apart"
                           + (f"; {meanwhile}" if meanwhile else "") + f": {why}")
            stop = self._sleep(backoff.next())
            if stop is not None:
                raise CatalogueGivenUp(f"{what}: gave up waiting for central after "
                                       f"{duration(self.clock() - since)}: {stop} (last error: {why})")

    def _central_answers(self) -> bool:
        try:
            self.client.health()
            return True
        except (CentralError, CentralUnreachable):
            return False

    def _sleep(self, seconds: float) -> Optional[str]:
        """Sleep, in slices so that a reason to stop is seen soon; that reason, or None after the whole time."""
        end = self.clock() + seconds
        while True:
            stop = self.give_up()
            left = end - self.clock()
            if stop is not None or left <= 0:
                return stop
            self.sleep(min(WAIT_SLICE_S, left))


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

    def __init__(self, handover: Handover, workdir: Path, trace: Callable[[str], None],
                 stopping: Callable[[], bool] = lambda: False,
                 deadline: Callable[[], Optional[float]] = lambda: None,
                 aborted: Callable[[], bool] = lambda: False,
                 registered: Callable[[Dict[str, Any]], None] = lambda _: None) -> None:
        self.workdir = workdir
        #: Central killed the job: no upload starts any more.
        self.aborted = aborted
        #: When (time.monotonic()) the upload grace after a limit kill ends; None: no such grace runs.
        self.deadline = deadline
        self.trace = trace
        self.job_id = int(handover.job_id)
        self.stopping = stopping
        #: Offline (pilot/offlinecatalogue.py): no central; the catalogue is job.json's inputs, and each output gets
        #: one copy in the job's outputs directory (`registered` hears of it), whatever replicas the JDL asks: the
        #: tower places the real ones.
        self.offline = handover.offline is not None
        self.catalogue: Union[CentralCatalogue, OfflineCatalogue]
        if handover.offline is not None:
            self.token_expires: Optional[float] = None
            self.catalogue = OfflineCatalogue(handover.offline["inputs"], registered)
        else:
            client = CentralClient(handover.central_url, handover.token, timeout=30.0, retries=3,
                                   ca_data=handover.ca_pem)
            self.token_expires = token_expires(handover.token)
            self.catalogue = CentralCatalogue(client, self.job_id, trace=trace, give_up=self._give_up)
        self.output_dir = handover.output_dir or f"/gridpilot/jobs/{self.job_id}"
        elements = handover.storage
        if elements is None:
            assert isinstance(self.catalogue, CentralCatalogue)
            elements = self.catalogue.client.storage_elements()
        self.close = [e["name"] for e in elements if e.get("close")] or list(handover.close_se or [])
        try:
            self.registry = build_registry([{k: e[k] for k in ("name", "url") if k in e} for e in elements], "central's storage elements")
        except ConfigError as e:
            self.trace(f"storage elements from central unusable: {e}")
            self.registry = Registry()
        self.staged: List[str] = []
        #: The inputs staged in, by LFN (what the InputDataList points the payload to).
        self.staged_files: Dict[str, StagedFile] = {}

    def _killed(self) -> bool:
        """No upload starts: central killed the job, as the agent told us or the catalogue's refusal showed."""
        return self.aborted() or self.catalogue.killed

    def _give_up(self) -> Optional[str]:
        """Why a catalogue call should stop waiting for central now (None: it should go on)."""
        if self.stopping():
            return "the JobWrapper was told to stop (the job was killed, or the slot is ending)"
        deadline = self.deadline()
        if deadline is not None and time.monotonic() >= deadline:
            return "the upload grace after the kill is over"
        if self.token_expires is not None and time.time() >= self.token_expires:
            return "the job token has expired: central would refuse it"
        return None

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
        self.staged_files = {f.lfn: f for f in result.files}
        if result.remote:
            # The payload reads nodownload inputs remotely; it finds their replicas in this file.
            with open(self.workdir / "nodownload.txt", "w") as f:
                for r in result.remote:
                    f.write(f"{r.lfn} {' '.join(rep.pfn for rep in r.replicas)}\n")

    def write_input_list(self, job: JobDescription) -> None:
        """After stage_in: the JDL's InputDataList (its InputData, in its InputDataListFormat) into the work
        directory, as JAliEn's JobWrapper writes it (pilot/inputlist.py). inputlist.InputListError says why not."""
        if job.input_data_list is None:
            return
        entries = []
        for e in job.input_data:
            got = self.staged_files.get(e.path)
            entries.append(inputlist.ListedInput(e.path, got.path if got is not None else None,
                                                 got.digest.size if got is not None else None))
        fmt = datalist.format_of(job.input_data_list_format) or job.input_data_list_format
        # JAliEn's words (its JobWrapper logs them), with the format and the count.
        self.trace(f"Going to create {'XML' if fmt == datalist.XML_SINGLE else 'list'}: {job.input_data_list} "
                   f"({fmt}, {len(entries)} input file(s))")
        path = inputlist.write_input_list(self.workdir, job.input_data_list, job.input_data_list_format, entries)
        # Not an output a pattern takes, as the inputs are not.
        self.staged.append(path.name)

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

    def _one_copy(self, outputs: List[OutputSpec]) -> List[OutputSpec]:
        """Offline, each output once, in the outputs directory (the tower makes the replicas the JDL asks for)."""
        if not self.offline:
            return outputs
        return [dataclasses.replace(o, replicas=1, ses=()) for o in outputs]

    def stage_out(self, job: JobDescription, *, error: bool) -> JobStatus:
        """Upload and register the outputs (OutputErrorE after a failure). The job state the outcome means."""
        specs = job.output_error_e if error else job.outputs
        try:
            outputs = self._one_copy(_output_specs(specs, self.registry, self.workdir, exclude=self.staged,
                                                   trace=self.trace))
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
                               exclude=self.staged, stop=self._killed)
        except (ConfigError, StorageError) as e:
            self.trace(f"stage-out failed: {e}")
            return JobStatus.ERROR_SV
        for line in result.trace:
            self.trace(line)
        if self.catalogue.killed:
            # Central has the kill (and turns a DONE into KILLED anyway): say what happened, not an upload failure.
            self.trace(KILLED_AT_REGISTRATION)
            return JobStatus.KILLED
        if not result.files:
            return JobStatus.DONE
        return {
            StageOutcome.COMPLETE: JobStatus.DONE,
            StageOutcome.PARTIAL: JobStatus.DONE_WARN,
            StageOutcome.FAILED: JobStatus.ERROR_SV,
        }[result.outcome]

    def stage_out_after_kill(self, job: JobDescription, deadline: float,
                             announce: Callable[[List[str], Optional[str]], None]) -> None:
        """The payload was killed for a broken limit: upload the outputs that exist and the logs, none started after
        `deadline` (time.monotonic()), and trace what was and was not uploaded (pilot/killupload.py). The job's state
        is the limit's, whatever this uploads."""
        try:
            outputs = self._one_copy(_output_specs(job.outputs, self.registry, self.workdir, exclude=self.staged,
                                                   trace=self.trace))
            logs = self._one_copy(_output_specs(job.output_error_e, self.registry, self.workdir, exclude=self.staged,
                                                trace=self.trace))
        except ConfigError as e:
            self.trace(f"stage-out failed: {e}")
            return
        steps = killupload.plan(outputs, logs, lambda name: (self.workdir / name).is_file())
        if len(self.registry) == 0:
            self.trace("stage-out: central lists no storage element")
            steps = [(spec, why or "no storage element") for spec, why in steps]
        archives = {spec.name for spec, _ in steps if spec.is_archive}

        def upload(spec: Any) -> Optional[str]:
            self.trace(f"Uploading: {spec.name} to {self.output_dir}")
            try:
                # One output at a time, so the grace is looked at between them; the other archives are no member.
                result = stage_out([spec], self.workdir, self.output_dir, self.registry, self.catalogue, self.close,
                                   exclude=[*self.staged, *(archives - {spec.name})])
            except (ConfigError, StorageError) as e:
                self.trace(f"stage-out {spec.name} failed: {e}")
                return killupload.FAILED
            # Not the line of the job state an outcome would mean ("stage-out: failed (ERROR_SV)"): the limit's
            # state is the job's, whatever is uploaded.
            verdict = f"stage-out: {result.outcome.value} ({result.outcome.job_status})"
            for line in result.trace:
                # "Uploading: …" was traced above, before the upload began (so a hung one shows which).
                if line != verdict and not line.startswith("Uploading: "):
                    self.trace(line)
            if not result.files:
                return killupload.NOTHING
            # Why it failed is in the lines above; the summary says only that it did.
            return None if result.files[0].replicas else killupload.FAILED

        outcomes = killupload.run(steps, deadline, time.monotonic, upload, announce,
                                  stop=lambda: killupload.KILLED if self._killed() else None)
        self.trace(killupload.summary(outcomes))
