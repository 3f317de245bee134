"""A user's files on the grid: `gridpilot get ID` (a job's registered outputs), `gridpilot ls LFN_DIR` (the
catalogue) and `gridpilot cp SRC DEST` (one file, either way), as alien.py's get/ls/cp and DIRAC's
dirac-wms-job-get-output.

What a job's outputs are is central's answer, not a guess from its JDL: the files it registered in the catalogue
(GET /jobs/{id}/files; a resubmission removes an ended attempt's, so these are the current or last attempt's).
Each file comes from one of its replicas, tried in the catalogue's order, through the storage element kinds of
gridpilot.storage (file://, root://) built from central's list of storage elements, exactly as a job's inputs are.
A download is written under a hidden temporary name next to its target, checksummed on the way and compared with
the catalogue's size and checksums; only a copy that matches is renamed into place, so a corrupted replica leaves
nothing behind and the next replica is tried. A file already at the target with the catalogue's size and checksum
is kept (a second `get` into the same directory fetches nothing); one with other content is never overwritten.

Archives (`--unpack`, registered files ending in .zip: what OutputArchive and OutputErrorE make) are unpacked beside
themselves after they verified, member by member under temporary names, with zip's own CRC checked. A member whose
name is absolute, has a `..` component, is a symbolic link, or would land outside the destination through a link
already there refuses the whole archive before anything of it is written.

A `file:` prefix marks a local path in `cp` (alien.py's convention); an LFN is an absolute catalogue path.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import posixpath
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

from gridpilot import cli_codes
from gridpilot.client import CentralClient
from gridpilot.console import Failed, UsageError, _print_json, _when, client_for
from gridpilot.errors import CentralError, ConfigError, StorageError
from gridpilot.states import JobStatus
from gridpilot.storage.atomic import AtomicFile
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import Checksummer, Digest
from gridpilot.storage.registry import build_storage_element

#: The marker of a local path in `cp` (alien.py's); `file://` is taken as well.
LOCAL_PREFIX = "file:"
#: Files at least this large show their progress (on a terminal): smaller ones are over before it would help.
PROGRESS_MIN_BYTES = 1 << 20
#: How often the progress line is redrawn, at most.
PROGRESS_EVERY_S = 0.25
#: Block size when a file already present is checksummed.
_BLOCK = 1 << 20


# -- storage elements as central lists them --


class Elements:
    """Central's storage elements, built once per command; one that cannot be used here (a scheme this
    installation has no client for) is remembered with the reason, which a replica on it then reports."""

    def __init__(self, client: CentralClient) -> None:
        self._client = client
        #: By upper-case name: the element, or why it cannot be used here.
        self._built: Optional[Dict[str, Union[StorageElement, str]]] = None

    def _build(self) -> Dict[str, Union[StorageElement, str]]:
        if self._built is None:
            built: Dict[str, Union[StorageElement, str]] = {}
            for e in self._client.storage_elements():
                name = str(e.get("name"))
                try:
                    built[name.upper()] = build_storage_element({"name": name, "url": e.get("url")},
                                                                f"storage element {name}")
                except ConfigError as err:
                    built[name.upper()] = str(err)
            self._built = built
        return self._built

    def get(self, name: str) -> StorageElement:
        se = self._build().get(name.upper())
        if se is None:
            raise StorageError("central lists no such storage element", se=name, op="lookup")
        if isinstance(se, str):
            raise StorageError(f"cannot be used from here: {se}", se=name, op="lookup")
        return se


# -- progress on a terminal --


class Progress:
    """One line on stderr, redrawn as bytes arrive, for files of PROGRESS_MIN_BYTES or more, only on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._shown = False
        self._last = 0.0

    def start(self, name: str, size: int) -> Optional[Callable[[int], None]]:
        if not self.enabled or size < PROGRESS_MIN_BYTES:
            return None
        self._shown = False

        def tick(done: int) -> None:
            now = time.monotonic()
            if now - self._last < PROGRESS_EVERY_S and done < size:
                return
            self._last = now
            self._shown = True
            self.stream.write(f"\r{name}: {done / 1e6:.1f} of {size / 1e6:.1f} MB ({100 * done // max(size, 1)}%)")
            self.stream.flush()

        return tick

    def end(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


# -- one verified download --


@dataclass
class Fetched:
    """One file placed locally: where from (lfn, se, pfn) and what it is (size, checksums)."""

    lfn: str
    path: Path
    size: int
    adler32: Optional[str]
    md5: Optional[str]
    #: "fetched" (downloaded now) or "present" (already there with the catalogue's size and checksums).
    status: str
    se: Optional[str] = None
    pfn: Optional[str] = None
    #: The replicas that failed before the one used: [{"se", "pfn", "error"}].
    failed: List[Dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"lfn": self.lfn, "path": str(self.path), "size": self.size, "adler32": self.adler32, "md5": self.md5,
                "status": self.status, "se": self.se, "pfn": self.pfn, "failed_replicas": self.failed}


def _digest_of(entry: Dict[str, Any]) -> Digest:
    return Digest(size=int(entry["size"]), adler32=entry.get("adler32"), md5=entry.get("md5"))


def _local_digest(path: Path, md5: bool) -> Digest:
    summer = Checksummer(md5=md5)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            summer.update(block)
    return summer.digest()


def _already_there(path: Path, expected: Digest) -> bool:
    """Whether `path` holds the catalogue's content already; Failed when something else is there."""
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_symlink() or not path.is_file():
        raise Failed(f"{path} exists and is not a regular file: not overwritten")
    if path.stat().st_size == expected.size:
        got = _local_digest(path, md5=expected.md5 is not None and expected.adler32 is None)
        if not got.mismatches(expected):
            return True
    raise Failed(f"{path} exists with other content than the catalogue's: not overwritten (remove it, or choose "
                 "another --dest)")


def download(elements: Elements, entry: Dict[str, Any], target: Path, progress: Progress) -> Fetched:
    """Place the catalogue entry `entry` (lookup's or job_files' form) at `target`, from the first replica that
    downloads and verifies. Failed naming every replica's error when none does; nothing is left at `target`."""
    lfn = str(entry["lfn"])
    expected = _digest_of(entry)
    if _already_there(target, expected):
        return Fetched(lfn, target, expected.size, expected.adler32, expected.md5, "present")
    replicas = entry.get("replicas") or []
    if not replicas:
        raise Failed(f"{lfn}: the catalogue knows no replica of it")
    if expected.adler32 is None and expected.md5 is None:
        print(f"gridpilot: {lfn}: the catalogue has no checksum for it: checked by its size only", file=sys.stderr)
    failed: List[Dict[str, str]] = []
    for rep in replicas:
        se_name, pfn = str(rep["se"]), str(rep["pfn"])
        try:
            se = elements.get(se_name)
            # durable: synced before it gets its name, so a crash cannot leave a short file under it either.
            digest = se.get(pfn, target, expected=expected, durable=True,
                            progress=progress.start(posixpath.basename(lfn), expected.size))
        except StorageError as e:
            failed.append({"se": se_name, "pfn": pfn, "error": e.what})
            continue
        finally:
            progress.end()
        return Fetched(lfn, target, digest.size, expected.adler32 or digest.adler32, expected.md5 or digest.md5,
                       "fetched", se_name, pfn, failed)
    tried = "; ".join(f"{f['se']} {f['pfn']}: {f['error']}" for f in failed)
    raise Failed(f"{lfn}: no replica could be downloaded and verified ({tried})")


# -- archives --


def _member_target(root: Path, info: zipfile.ZipInfo) -> Optional[Path]:
    """Where member `info` goes below `root` (None for a directory entry); Failed naming why it may not."""
    name = info.filename
    why = None
    mode = info.external_attr >> 16
    if not name or "\0" in name or "\\" in name:
        why = "an empty name, a NUL or a backslash"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        why = "an absolute path"
    elif any(part == ".." for part in name.split("/")):
        why = "a '..' component"
    elif stat.S_ISLNK(mode):
        why = "a symbolic link"
    elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # No type bits (Windows zips, Python's writestr) is a plain file; a device or FIFO is not made here.
        why = "neither a file nor a directory"
    if why is not None:
        raise Failed(f"member {name!r} is {why}: the archive is not unpacked")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return None
    target = root.joinpath(*parts)
    # A directory already there may be a link out of the destination: what resolves outside is refused.
    real_root = root.resolve()
    if not target.parent.resolve().is_relative_to(real_root):
        raise Failed(f"member {name!r} would land outside {root} (through a link there): the archive is not unpacked")
    return None if info.is_dir() else target


@dataclass
class Unpacked:
    archive: str
    path: Path
    members: List[Dict[str, Any]]

    def to_dict(self) -> Dict[str, Any]:
        return {"archive": self.archive, "path": str(self.path), "members": self.members}


def unpack(archive: Path, root: Path, lfn: str) -> Unpacked:
    """Extract every member of the zip `archive` below `root`, each verified by zip's CRC and written under a
    temporary name first. Every member is checked before the first is written (see _member_target)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise Failed(f"{archive}: not a zip archive that can be read: {e}") from None
    members: List[Dict[str, Any]] = []
    with zf:
        plan: List[Tuple[zipfile.ZipInfo, Path]] = []
        seen: Dict[Path, str] = {}
        for info in zf.infolist():
            try:
                target = _member_target(root, info)
            except Failed as e:
                raise Failed(f"{archive}: {e}") from None
            if target is None:
                continue
            if target in seen:
                raise Failed(f"{archive}: members {seen[target]!r} and {info.filename!r} land on one file: the "
                             "archive is not unpacked")
            seen[target] = info.filename
            plan.append((info, target))
        # Each member's size as the archive declares it, which is also the most zip reads out of it: an archive
        # that would fill the disk (a zip bomb, or just too big) is refused before the first byte is written.
        need = sum(info.file_size for info, _ in plan)
        free = shutil.disk_usage(root).free
        if need > free:
            raise Failed(f"{archive}: its members need {need} bytes, {root} has {free} free: the archive is not "
                         "unpacked")
        for info, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            status = "unpacked"
            if target.exists() or target.is_symlink():
                if not _same_member(zf, info, target):
                    raise Failed(f"{target} exists with other content than member {info.filename!r} of {archive}: "
                                 "not overwritten")
                status = "present"
            else:
                _extract(zf, info, target)
            members.append({"name": info.filename, "path": str(target), "size": info.file_size, "status": status})
    return Unpacked(lfn, archive, members)


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    try:
        with AtomicFile(target, op="unpack", durable=True) as out, zf.open(info) as src:
            # ZipExtFile checks the member's CRC-32 when it reaches its end: a damaged member raises here.
            for block in iter(lambda: src.read(_BLOCK), b""):
                out.write(block)
            out.commit()
    except (zipfile.BadZipFile, OSError, StorageError) as e:
        raise Failed(f"{target}: member {info.filename!r} cannot be unpacked: {e}") from None


def _same_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> bool:
    if target.is_symlink() or not target.is_file() or target.stat().st_size != info.file_size:
        return False
    with zf.open(info) as a, open(target, "rb") as b:
        for block in iter(lambda: a.read(_BLOCK), b""):
            if b.read(len(block)) != block:
                return False
    return True


# -- where things go locally --


def check_dest(dest: Path) -> Path:
    """`dest`, made if missing, once a file can be created in it; UsageError naming it otherwise."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=dest, prefix=".gridpilot-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"destination {dest} is not a directory that can be written to: {e.strerror or e}") from None
    return dest


def relative_name(lfn: str, output_dir: str) -> str:
    """Where a job's file goes below DEST: its path below the job's OutputDir (a file elsewhere, its name)."""
    prefix = output_dir.rstrip("/") + "/"
    rel = lfn[len(prefix):] if lfn.startswith(prefix) else posixpath.basename(lfn)
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        # Central normalizes every LFN; a name like this is not one of its answers.
        raise Failed(f"{lfn}: not a file name that can be placed locally")
    return rel


def split_patterns(values: Optional[Sequence[str]]) -> List[str]:
    """--files values: repeatable, each a comma-separated list of globs."""
    out: List[str] = []
    for v in values or ():
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def job_entries(client: CentralClient, job_id: int) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The job's answer (first page) and every file it registered, page by page."""
    try:
        first = client.job_files(job_id)
    except CentralError as e:
        if e.status == 404 and e.code == "job_not_found":
            # Central answers a job of another user as it answers one that does not exist, and so does this.
            raise Failed(f"no job {job_id} of yours: it does not exist, or it is another user's (exit 1)") from None
        raise
    files = list(first["files"])
    page = first
    # An empty page ends the walk whatever `more` says: a confused server cannot keep it going.
    while page.get("more") and page["files"]:
        page = client.job_files(job_id, offset=page["offset"] + len(page["files"]))
        files += page["files"]
    return first, files


# -- the commands --


def cmd_get(args: argparse.Namespace) -> int:
    patterns = split_patterns(args.files)
    dest = Path(args.dest if args.dest is not None else str(args.id)).expanduser()
    client = client_for(args)
    job, entries = job_entries(client, args.id)
    chosen = [e for e in entries if _matches(posixpath.basename(e["lfn"]), patterns)]
    if not JobStatus[job["state"]].is_final:
        print(f"gridpilot: job {args.id} is {job['state']}: its outputs may not all be registered yet",
              file=sys.stderr)
    if not chosen:
        what = f"matching {', '.join(patterns)}" if patterns else "at all"
        raise Failed(f"job {args.id} ({job['state']}) registered no file {what} "
                     f"({len(entries)} registered under {job['output_dir']})")
    check_dest(dest)
    elements = Elements(client)
    progress = Progress(sys.stderr)
    fetched: List[Fetched] = []
    unpacked: List[Unpacked] = []
    # A file that cannot be had does not stop the others: each failure is a line on stderr (and an entry of
    # `errors` with --json), and the command ends FAILED after the last file.
    errors: List[Dict[str, str]] = []
    for e in chosen:
        try:
            target = dest / relative_name(e["lfn"], job["output_dir"])
            target.parent.mkdir(parents=True, exist_ok=True)
            got = download(elements, e, target, progress)
        except (Failed, OSError) as err:
            errors.append({"lfn": e["lfn"], "error": _why(err)})
            print(f"gridpilot: {_why(err)}", file=sys.stderr)
            continue
        fetched.append(got)
        if not args.json:
            _print_fetched(got, sys.stdout)
        if args.unpack and got.path.name.endswith(".zip"):
            try:
                u = unpack(got.path, got.path.parent, got.lfn)
            except (Failed, OSError) as err:
                errors.append({"lfn": got.lfn, "error": _why(err)})
                print(f"gridpilot: {_why(err)}", file=sys.stderr)
                continue
            unpacked.append(u)
            if not args.json:
                print(f"  unpacked {len(u.members)} member(s): {', '.join(m['name'] for m in u.members)}")
    if args.json:
        _print_json({"id": args.id, "state": job["state"], "output_dir": job["output_dir"], "dest": str(dest),
                     "files": [f.to_dict() for f in fetched], "unpacked": [u.to_dict() for u in unpacked],
                     "errors": errors})
    if errors:
        raise Failed(f"{len(errors)} of the {len(chosen)} file(s) of job {args.id} could not be had in full; "
                     f"what could is in {dest}")
    return cli_codes.OK


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def _print_fetched(f: Fetched, out: TextIO) -> None:
    how = f"from {f.se}" if f.status == "fetched" else "already there, verified"
    retried = f" (after {len(f.failed)} failed replica(s))" if f.failed else ""
    print(f"{f.path}\t{f.size} bytes\t{how}{retried}", file=out)
    for bad in f.failed:
        print(f"  replica {bad['se']} {bad['pfn']} failed: {bad['error']}", file=sys.stderr)


def check_lfn(text: str, what: str) -> str:
    """An absolute catalogue path, as central takes it; UsageError otherwise (nothing sent)."""
    if not text.startswith("/"):
        raise UsageError(f"{what} {text!r} is not an LFN (an absolute catalogue path such as /gridpilot/user/a/alice/x); "
                         f"a local path is written {LOCAL_PREFIX}{text}")
    return text


def cmd_ls(args: argparse.Namespace) -> int:
    path = check_lfn(args.path, "LFN_DIR")
    client = client_for(args)
    try:
        entries = client.list_dir(path)
    except CentralError as no_dir:
        if no_dir.status != 404:
            raise
        # `ls` of a file lists that file, as ls(1) and alien.py's ls do; neither a file nor a directory: the latter's
        # answer.
        try:
            f = client.lookup_file(path)
        except CentralError:
            raise no_dir from None
        entries = [{"name": posixpath.basename(f["lfn"]), "lfn": f["lfn"], "type": "file", "size": f["size"],
                    "adler32": f.get("adler32"), "md5": f.get("md5"), "owner": f.get("owner"),
                    "job_id": f.get("job_id"), "created": f.get("created"), "replicas": len(f.get("replicas", []))}]
    if args.json:
        _print_json({"path": path, "entries": entries})
        return cli_codes.OK
    for e in entries:
        name = e["name"] + ("/" if e["type"] == "dir" else "")
        if not args.long:
            print(name)
        elif e["type"] == "dir":
            print(f"d  {'-':>12}  {'-':<8}  {'-':<12}  {'-':>3}  {'-':<19}  {name}")
        else:
            print(f"-  {e['size']:>12}  {e.get('adler32') or '-':<8}  {e.get('owner') or '-':<12}  "
                  f"{e.get('replicas', 0):>3}  {_when(e.get('created'))}  {name}")
    return cli_codes.OK


def local_path(text: str) -> Optional[str]:
    """The local path `text` names with its `file:` (or `file://`) prefix, or None when it has none (an LFN)."""
    if text.startswith("file://"):
        rest = text[len("file://"):]
    elif text.startswith(LOCAL_PREFIX):
        rest = text[len(LOCAL_PREFIX):]
    else:
        return None
    if not rest:
        raise UsageError(f"{text!r} names no local path")
    return rest


def cmd_cp(args: argparse.Namespace) -> int:
    src_local, dest_local = local_path(args.src), local_path(args.dest)
    if src_local is not None and dest_local is not None:
        raise UsageError("both SRC and DEST are local (file:): use cp(1)")
    if src_local is None and dest_local is None:
        check_lfn(args.src, "SRC")
        check_lfn(args.dest, "DEST")
        raise UsageError("copying from one LFN to another is not supported: download it (DEST file:PATH), then "
                         "upload that (SRC file:PATH)")
    if src_local is not None:
        return _upload(args, Path(src_local), check_lfn(args.dest, "DEST"))
    assert dest_local is not None
    lfn = check_lfn(args.src, "SRC")
    client = client_for(args)
    entry = client.lookup_file(lfn)
    target = Path(dest_local).expanduser()
    if target.is_dir() or dest_local.endswith("/"):
        target = check_dest(target) / posixpath.basename(str(entry["lfn"]))
    else:
        check_dest(target.parent if str(target.parent) else Path("."))
    got = download(Elements(client), entry, target, Progress(sys.stderr))
    if args.json:
        _print_json(got.to_dict())
    else:
        _print_fetched(got, sys.stdout)
    return cli_codes.OK


def _upload(args: argparse.Namespace, local: Path, lfn: str) -> int:
    try:
        from gridpilot.userupload import upload_file  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise UsageError("uploading (SRC file:...) needs gridpilot.userupload, which this installation lacks") from None
    local = local.expanduser()
    if not local.is_file():
        raise UsageError(f"no local file {local}")
    try:
        entry = upload_file(client_for(args), local, lfn)
    except (StorageError, ConfigError) as e:
        raise Failed(f"upload of {local} to {lfn} failed: {e}") from None
    if args.json:
        _print_json(entry)
    else:
        print(f"{lfn}\t{entry.get('size')} bytes\tregistered")
    return cli_codes.OK


__all__ = ["Elements", "Fetched", "LOCAL_PREFIX", "Progress", "check_dest", "cmd_cp", "cmd_get", "cmd_ls",
           "download", "local_path", "relative_name", "split_patterns", "unpack"]
