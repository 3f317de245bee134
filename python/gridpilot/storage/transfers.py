"""Staging's verified transfers: a job's inputs from the catalogue's replicas into its work directory, its outputs
onto storage elements and into the catalogue. (What the JobWrapper stages, and how it waits for central, is
pilot/staging.py.)

Stage-in: each input is looked up in the catalogue, its replicas are tried close-first, each download is checked
against the catalogue's size and checksums, and the first good copy is placed in the work directory. `,nodownload`
inputs are only listed (with their replicas, close-first) for the payload to read remotely. If every replica of an
input fails, StageInError names the file and each replica's error (the pilot ends the job ERROR_IB, INPUT_FILES).

Stage-out: each output (a file, or a zip archive of files matched by patterns) gets up to N replicas on N different
storage elements, tried in order (those the job named, then the close ones), skipping to the next one when one
refuses. put() returns only after the storage element itself reported the same size and adler32 as sent (it deletes
a copy that fails that check); only then is the replica registered, one replica at a time (the catalogue may make
that wait out an outage; a copy it refuses or gives up on is removed). Empty files are skipped.

The outcome follows the ALICE JobWrapper: every output has all its replicas: COMPLETE (the job goes on to DONE);
every output has at least one but some fewer than asked: PARTIAL (DONE_WARN); some output has none: FAILED
(ERROR_SV), whatever happened to the others, because that output is lost.
"""

from __future__ import annotations

import enum
import posixpath
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from gridpilot.errors import ConfigError, StageInError, StorageError
from gridpilot.storage.archive import build_archive, select_members
from gridpilot.storage.base import StorageElement
from gridpilot.storage.catalogue_protocol import Catalogue, FileEntry, Replica
from gridpilot.storage.checksum import Digest
from gridpilot.storage.placement import candidate_ses, new_pfn, order_replicas
from gridpilot.storage.registry import Registry

# Called with (lfn, storage element name, bytes moved so far) after each block of a transfer.
StagingProgress = Callable[[str, str, int], None]


def _describe(e: StorageError) -> str:
    return f"{e.op}: {e.what}" if e.op else e.what


#: The units of format_size, 1024 apart.
_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")


def format_size(n: int) -> str:
    """A size as JAliEn writes one in its traces: bytes below 1 KB ("512 B"), else three decimals in the largest unit
    of 1024 that keeps the number at 1 or more ("5.915 KB", "1.500 GB")."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024.0
    step = 0
    while value >= 1024.0 and step < len(_SIZE_UNITS) - 1:
        value /= 1024.0
        step += 1
    return f"{value:.3f} {_SIZE_UNITS[step]}"


def _rate(size: int, seconds: float) -> str:
    return f"{size / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "-"


# ---- stage-in ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One input of a job: a logical file name, and whether the payload reads it remotely (nodownload)."""

    lfn: str
    nodownload: bool = False

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """From the JDL form "LF:/alice/data/file.root" or "LF:/alice/data/file.root,nodownload"."""
        body = text.strip()
        if body[:3].upper() == "LF:":
            body = body[3:]
        lfn, *options = (part.strip() for part in body.split(","))
        unknown = [o for o in options if o.lower() != "nodownload"]
        if not lfn.startswith("/") or unknown:
            why = f"unknown option(s) {', '.join(unknown)}" if unknown else "the LFN must be an absolute path"
            raise ConfigError(f"input file {text!r}: {why}")
        return cls(lfn=lfn, nodownload=bool(options))


@dataclass(frozen=True)
class StagedFile:
    """An input placed in the work directory, and where it came from."""

    lfn: str
    path: Path
    se: str
    pfn: str
    digest: Digest


@dataclass(frozen=True)
class RemoteFile:
    """A nodownload input: not fetched; its replicas, close first, for the payload to open remotely."""

    lfn: str
    replicas: tuple[Replica, ...]


@dataclass
class StageInResult:
    files: list[StagedFile] = field(default_factory=list)
    remote: list[RemoteFile] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)


def stage_in(
    inputs: Sequence[InputSpec],
    workdir: Path,
    registry: Registry,
    catalogue: Catalogue,
    close_ses: Sequence[str] = (),
    *,
    progress: Optional[StagingProgress] = None,
) -> StageInResult:
    """Fetch every input (except nodownload ones) into `workdir`; raises StageInError on the first input that no
    replica could provide (its `trace` holds the lines so far)."""
    result = StageInResult()
    trace = result.trace
    # Checked before any transfer: two inputs landing on one name would silently replace each other.
    by_name: dict[str, str] = {}
    for spec in inputs:
        if spec.nodownload:
            continue
        name = posixpath.basename(spec.lfn)
        problem = "the LFN names no file" if not name else None
        if name in by_name:
            problem = f"same file name in the work directory as {by_name[name]}"
        if problem:
            err = StageInError(spec.lfn, [], problem)
            err.trace = trace
            raise err
        by_name[name] = spec.lfn
    for spec in inputs:
        try:
            entry = _lookup(catalogue, spec.lfn)
            replicas = order_replicas(entry.replicas, close_ses)
            if spec.nodownload:
                result.remote.append(RemoteFile(spec.lfn, tuple(replicas)))
                trace.append(
                    f"stage-in {spec.lfn}: nodownload, listed with {len(replicas)} replica(s), first {replicas[0].pfn}"
                )
                continue
            dest = workdir / posixpath.basename(spec.lfn)
            result.files.append(_fetch(entry, replicas, dest, registry, trace, progress))
        except StageInError as e:
            trace.append(f"stage-in failed: {e}")
            e.trace = trace
            raise
    return result


def _lookup(catalogue: Catalogue, lfn: str) -> FileEntry:
    try:
        entry = catalogue.lookup(lfn)
    except Exception as e:  # noqa: BLE001 - whatever the catalogue client raised, the input cannot be found
        raise StageInError(lfn, [], f"catalogue lookup failed: {type(e).__name__}: {e}") from e
    if entry is None:
        raise StageInError(lfn, [], "not in the catalogue")
    if not entry.replicas:
        raise StageInError(lfn, [], "the catalogue knows no replica")
    return entry


def _fetch(
    entry: FileEntry,
    replicas: list[Replica],
    dest: Path,
    registry: Registry,
    trace: list[str],
    progress: Optional[StagingProgress],
) -> StagedFile:
    """The first replica that downloads and verifies, placed at `dest`; StageInError with every attempt otherwise."""
    expected = entry.digest
    if expected.adler32 is None and expected.md5 is None:
        trace.append(f"stage-in {entry.lfn}: the catalogue has no checksum for it: checking the size only")
    attempts: list[tuple[str, str, str]] = []
    for replica in replicas:
        se = registry.find(replica.se)
        if se is None:
            attempts.append((replica.se, replica.pfn, "storage element not configured on this site"))
            trace.append(f"stage-in {entry.lfn}: {replica.se} {replica.pfn}: storage element not configured")
            continue
        # JAliEn's line, with the catalogue's size; gridpilot's own (replica, checksum, time) follows the transfer.
        trace.append(f"Getting InputFile: {entry.lfn} to {dest} ({format_size(entry.size)})")
        t0 = time.monotonic()
        try:
            digest = se.get(replica.pfn, dest, expected=expected, progress=_bind(progress, entry.lfn, se.name))
        except StorageError as e:
            attempts.append((replica.se, replica.pfn, _describe(e)))
            trace.append(f"stage-in {entry.lfn}: {replica.se} {replica.pfn} failed: {_describe(e)}")
            continue
        dt = time.monotonic() - t0
        trace.append(
            f"stage-in {entry.lfn}: from {se.name} {replica.pfn} ({digest}) verified in {dt:.2f} s, "
            f"{_rate(digest.size, dt)}"
        )
        return StagedFile(entry.lfn, dest, se.name, replica.pfn, digest)
    raise StageInError(entry.lfn, attempts)


def _bind(progress: Optional[StagingProgress], lfn: str, se: str) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    return lambda done: progress(lfn, se, done)


# ---- stage-out ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """One output of a job: a file `name` in the work directory, or, with member patterns, a zip archive `name`
    built from the files they match; `replicas` copies in all, tried first on the storage elements in `ses`, then
    on the close ones.

    From the JDL: `"out.zip:*.root,stdout@disk=2"` is OutputSpec("out.zip", ("*.root", "stdout"), 2). ALICE reads
    `@ALICE::CERN::EOS,disk=1` as that element plus one more, so the adapter passes replicas=len(ses) + N.
    """

    name: str
    members: tuple[str, ...] = ()
    replicas: int = 1
    ses: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return bool(self.members)


class StageOutcome(enum.Enum):
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def job_status(self) -> str:
        """The job state name (states.py) the pilot reports for this outcome."""
        return {"complete": "DONE", "partial": "DONE_WARN", "failed": "ERROR_SV"}[self.value]


@dataclass
class OutputFileResult:
    """What happened to one output file: its registered replicas, and each storage element's error."""

    lfn: str
    path: Path
    wanted: int
    digest: Optional[Digest] = None
    replicas: list[Replica] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def outcome(self) -> StageOutcome:
        if len(self.replicas) >= self.wanted:
            return StageOutcome.COMPLETE
        return StageOutcome.PARTIAL if self.replicas else StageOutcome.FAILED


@dataclass
class StageOutResult:
    files: list[OutputFileResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> StageOutcome:
        outcomes = {f.outcome for f in self.files}
        for worst in (StageOutcome.FAILED, StageOutcome.PARTIAL):
            if worst in outcomes:
                return worst
        return StageOutcome.COMPLETE


def _check_specs(outputs: Sequence[OutputSpec], lfn_dir: str) -> None:
    if not lfn_dir.startswith("/"):
        raise ConfigError(f"output directory {lfn_dir!r} must be an absolute LFN")
    seen: set[str] = set()
    for spec in outputs:
        parts = spec.name.split("/")
        if not spec.name or spec.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigError(f"output {spec.name!r}: the name must be a relative path in the work directory")
        if spec.is_archive and len(parts) != 1:
            raise ConfigError(f"output archive {spec.name!r}: an archive name is a plain file name")
        if spec.name in seen:
            raise ConfigError(f"output {spec.name!r} is listed twice")
        if spec.replicas < 1:
            raise ConfigError(f"output {spec.name!r}: replicas must be at least 1, not {spec.replicas}")
        for pattern in spec.members:
            if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
                raise ConfigError(f"output archive {spec.name!r}: member pattern {pattern!r} must be relative")
        seen.add(spec.name)


def stage_out(
    outputs: Sequence[OutputSpec],
    workdir: Path,
    lfn_dir: str,
    registry: Registry,
    catalogue: Catalogue,
    close_ses: Sequence[str] = (),
    *,
    exclude: Iterable[str] = (),
    progress: Optional[StagingProgress] = None,
    stop: Callable[[], bool] = lambda: False,
) -> StageOutResult:
    """Build the archives, upload every output under `lfn_dir` (LFN = lfn_dir/name), register verified replicas.
    Once `stop()` is true (the job was killed), no other upload starts.

    `exclude` lists work directory files (relative names, e.g. the staged-in inputs) no archive may take.
    Raises ConfigError for bad specs, before any I/O; after that never raises: the result says what happened.
    """
    _check_specs(outputs, lfn_dir)
    result = StageOutResult()
    trace = result.trace
    archive_names = {spec.name for spec in outputs if spec.is_archive}
    excluded = set(exclude) | archive_names
    # Archives first, all of them: a payload file an archive takes must not change while others upload.
    ready: list[tuple[OutputSpec, str, Path]] = []
    for spec in outputs:
        lfn = posixpath.join(lfn_dir, spec.name)
        path = workdir / spec.name
        if spec.is_archive:
            problem = _make_archive(spec, workdir, excluded, result)
            if problem == "":
                continue
            if problem is not None:
                result.files.append(OutputFileResult(lfn, path, spec.replicas, errors=[("", "", problem)]))
                trace.append(f"stage-out {spec.name}: {problem}")
                continue
        elif not path.is_file():
            trace.append(f"stage-out {spec.name}: not found in the work directory, skipped")
            result.skipped.append(spec.name)
            continue
        elif path.stat().st_size == 0:
            trace.append(f"stage-out {spec.name}: empty file, skipped")
            result.skipped.append(spec.name)
            continue
        ready.append((spec, lfn, path))
    for spec, lfn, path in ready:
        if stop():
            trace.append(f"stage-out {spec.name}: not uploaded, the job was killed")
            result.skipped.append(spec.name)
            continue
        result.files.append(_replicate(spec, lfn, path, registry, catalogue, close_ses, trace, progress, stop))
    if not result.files:
        trace.append("stage-out: no output file to upload")
    else:
        trace.append(f"stage-out: {result.outcome.value} ({result.outcome.job_status})")
    return result


def _make_archive(spec: OutputSpec, workdir: Path, excluded: set[str], result: StageOutResult) -> Optional[str]:
    """Build one archive in the work directory. None when built, "" when there is nothing to put in it (skipped,
    with a trace line), else why it could not be built."""
    trace = result.trace
    members, empty = select_members(workdir, spec.members, exclude=excluded)
    for name in empty:
        trace.append(f"stage-out {spec.name}: member {name} is empty, left out")
    if not members:
        trace.append(f"stage-out {spec.name}: no non-empty file matches {', '.join(spec.members)}, no archive made")
        result.skipped.append(spec.name)
        return ""
    path = workdir / spec.name
    if path.exists():
        # The payload wrote a file of that name: replacing it would lose it silently.
        return "a file of the archive's name already exists in the work directory"
    try:
        method = build_archive(path, workdir, members)
    except StorageError as e:
        return _describe(e)
    kind = "stored" if method == zipfile.ZIP_STORED else "deflated"
    trace.append(f"stage-out {spec.name}: archive of {len(members)} file(s), {kind}: {', '.join(members)}")
    return None


def _replicate(
    spec: OutputSpec,
    lfn: str,
    path: Path,
    registry: Registry,
    catalogue: Catalogue,
    close_ses: Sequence[str],
    trace: list[str],
    progress: Optional[StagingProgress],
    stop: Callable[[], bool] = lambda: False,
) -> OutputFileResult:
    """Copy one file to up to spec.replicas storage elements, registering each copy once it is verified; no copy
    starts once `stop()` is true (the job was killed: a refused registration may have just shown it)."""
    out = OutputFileResult(lfn=lfn, path=path, wanted=spec.replicas)
    candidates = candidate_ses(spec.ses, close_ses)
    trace.append(f"Uploading: {spec.name} to {posixpath.dirname(lfn)}")
    if len(candidates) < spec.replicas:
        trace.append(
            f"stage-out {spec.name}: {spec.replicas} replicas asked, "
            f"but only {len(candidates)} storage element(s) to try"
        )
    for name in candidates:
        if len(out.replicas) >= spec.replicas:
            break
        if stop():
            trace.append(f"stage-out {spec.name}: no other copy, the job was killed")
            break
        se = registry.find(name)
        if se is None:
            out.errors.append((name, "", "storage element not configured on this site"))
            trace.append(f"stage-out {spec.name}: {name}: storage element not configured, skipped")
            continue
        replica = _copy_one(spec, lfn, path, se, catalogue, out, trace, progress)
        if replica is not None:
            out.replicas.append(replica)
    status = f"{len(out.replicas)} of {spec.replicas} replica(s)"
    trace.append(f"stage-out {spec.name} -> {lfn}: {status}, {out.outcome.value}")
    return out


def _copy_one(
    spec: OutputSpec,
    lfn: str,
    path: Path,
    se: StorageElement,
    catalogue: Catalogue,
    out: OutputFileResult,
    trace: list[str],
    progress: Optional[StagingProgress],
) -> Optional[Replica]:
    pfn = new_pfn(se)
    t0 = time.monotonic()
    try:
        # put() has asked the storage element for size and adler32 and deleted the copy if they differ.
        digest = se.put(path, pfn, progress=_bind(progress, lfn, se.name))
    except StorageError as e:
        out.errors.append((se.name, pfn, _describe(e)))
        trace.append(f"stage-out {spec.name}: {se.name} {pfn} failed: {_describe(e)}")
        return None
    dt = time.monotonic() - t0
    problem = None
    if out.digest is not None and digest.mismatches(out.digest):
        problem = f"the file changed between copies ({digest} now, {out.digest} before)"
    else:
        try:
            catalogue.register(FileEntry(lfn, digest.size, digest.adler32, digest.md5, (Replica(se.name, pfn),)))
        except Exception as e:  # noqa: BLE001 - whatever the catalogue raised, the replica is not registered
            problem = f"registration failed: {type(e).__name__}: {e}"
        # JAliEn's line (true or false, as Java prints a boolean); why it failed follows in gridpilot's.
        trace.append(f"Registering: {lfn}. Return status: {'false' if problem else 'true'}")
    if problem is not None:
        # Verified but not registered (or inconsistent): an orphan nobody would ever find or clean. Remove it.
        try:
            se.delete(pfn)
            problem += " (copy removed)"
        except StorageError as e:
            problem += f" (copy NOT removed: {_describe(e)})"
        out.errors.append((se.name, pfn, problem))
        trace.append(f"stage-out {spec.name}: {se.name} {pfn}: {problem}")
        return None
    if out.digest is None:
        out.digest = digest
    trace.append(
        f"stage-out {spec.name}: {se.name} {pfn} verified on the storage element ({digest}) in {dt:.2f} s, "
        f"{_rate(digest.size, dt)}, registered"
    )
    return Replica(se.name, pfn)
