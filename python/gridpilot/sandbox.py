"""`gridpilot submit FILE.jdl [ARG...]`: the JDL's arguments, and the user's own files shipped with the job.

1. Arguments (ALICE's convention): `$1` ... `$N` in the JDL text are replaced by the submit's arguments before the
   text is parsed, anywhere in the file (values, expressions, comments alike). `$$` is a literal `$`, so `$$1` stays
   `$1`; `$0` and a `$` before anything but a digit are left as written. A `$N` with fewer than N arguments given is
   an error naming the line; arguments the JDL never uses draw a warning.
2. Local files: the `Executable` when written relative (`my.sh`, `bin/run.sh`, resolved against the JDL file's
   directory) or as `file:PATH`, and every `InputFile` entry without `LF:` (relative, absolute or `file:PATH`),
   must be readable regular files: a missing one is a one-line error naming the file, the JDL line and the
   attribute, before anything is uploaded or sent. An absolute Executable without `file:` (`/bin/sh`,
   `/alice/bin/x.sh`) is a path on the worker node or an LFN, as ALICE writes it, and is left alone; `LF:/x` becomes
   the bare LFN `/x` the JobWrapper fetches.
3. The local files go to `<own area>/sandbox/<hash>/<name>` (the own area from `GET /areas`, e.g.
   /gridpilot/user/a/alice), uploaded and registered by userupload (verified on the storage element, registered
   only when verified), and the JDL is rewritten to their `LF:` names before it is submitted. `<hash>` is the first
   16 hex digits of a SHA-256 over every shipped file's name and content: the same files submitted again land in
   the same directory and are reused (each checked against the catalogue's size and md5, and its replica on its
   storage element for size and adler32) instead of uploaded again; changed files make a new directory. So a job
   submit that central refuses after the upload leaves complete, registered files, which the corrected submit
   reuses, and an upload cut short (error, Ctrl-C, SIGKILL) leaves nothing registered and nothing at a final name.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable, ConfigError, JdlError, StorageError
from gridpilot.jdl.filespecs import parse_input_entry
from gridpilot.jdl.nodes import JdlDocument, ListValue, Scalar, String, Value
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import Checksummer, Digest, read_blocks
from gridpilot.storage.registry import build_storage_element

#: `$$` (a literal `$`) or `$N`, N from 1: one pass, so `$$1` is `$1` and never argument 1.
_ARG = re.compile(r"\$\$|\$([1-9][0-9]*)")
#: Directory of the shipped files under the user's own area.
SANDBOX_DIR = "sandbox"
#: Hex digits of the content hash that names a sandbox directory.
HASH_DIGITS = 16
_FILE_PREFIX = "file:"


class SandboxError(Exception):
    """A problem with the JDL's arguments or local files: one line, exit USAGE, nothing sent."""


class ShipFailed(Exception):
    """Copying one local file to its storage element failed (StorageError `cause`): nothing of it is registered."""

    def __init__(self, file: LocalFile, cause: StorageError) -> None:
        super().__init__(f"{file.attribute} {file.written}: {cause}")
        self.file = file
        self.cause = cause


# -- 1. arguments --


def substitute_arguments(text: str, args: Sequence[str], source: str = "JDL") -> Tuple[str, List[str]]:
    """`text` with `$N` replaced by args[N-1] and `$$` by `$`; and the warnings (arguments never used).
    SandboxError naming `source` and the line for a `$N` beyond the arguments given."""
    used = set()

    def one(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "$"
        n = int(m.group(1))
        if n > len(args):
            line = text.count("\n", 0, m.start()) + 1
            given = f"only {len(args)} argument(s) given" if args else "no argument given"
            raise SandboxError(f"{source}:{line}: ${n} needs argument {n}, {given} "
                               f"(`gridpilot submit {os.path.basename(source)} ARG...`; write $$ for a literal $)")
        used.add(n)
        return args[n - 1]

    out = _ARG.sub(one, text)
    warnings = []
    unused = [i + 1 for i in range(len(args)) if i + 1 not in used]
    if unused:
        warnings.append(f"{source}: warning: {len(args)} argument(s) given, but the JDL never uses "
                        f"{', '.join('$' + str(n) for n in unused)}")
    return out, warnings


# -- 2. local files --


@dataclass(frozen=True)
class LocalFile:
    """A file of the user's machine the JDL names: the attribute and line naming it, the text as written, the path
    it resolves to, and (InputFile) its options after the name ("nodownload")."""

    attribute: str
    line: int
    written: str
    path: Path
    options: str = ""

    @property
    def name(self) -> str:
        return self.path.name


def _strip_file_prefix(text: str) -> Tuple[str, bool]:
    if text[: len(_FILE_PREFIX)].lower() == _FILE_PREFIX:
        return text[len(_FILE_PREFIX):], True
    return text, False


def _local(attribute: str, line: int, written: str, path_text: str, base: Path, source: str,
           options: str = "") -> LocalFile:
    p = Path(os.path.expanduser(path_text))
    path = p if p.is_absolute() else base / p
    where = f"{source}:{line}: {attribute} {written!r}"
    if not path.exists():
        hint = ("; a command of the worker node is written with its absolute path (/bin/echo), a catalogue file as "
                "LF:/path") if attribute == "Executable" else ""
        raise SandboxError(f"{where}: no such local file {path}{hint}")
    if not path.is_file():
        raise SandboxError(f"{where}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise SandboxError(f"{where}: {path} is not readable")
    return LocalFile(attribute, line, written, path, options)


def _items(doc: JdlDocument, key: str) -> List[Tuple[String, int]]:
    entry = doc.entry(key)
    if entry is None:
        return []
    value = entry.value
    items = value.items if isinstance(value, ListValue) else (value,)
    return [(i, i.line or entry.line) for i in items if isinstance(i, String)]


def find_local_files(doc: JdlDocument, base: Path, source: str = "JDL") -> List[LocalFile]:
    """The local files a parsed JDL names (see the module docstring for which), in order, each checked to be a
    readable regular file; SandboxError for the first that is not, or for two with one name (they would land on
    one name in the sandbox and in the work directory)."""
    found: List[LocalFile] = []
    for item, line in _items(doc, "Executable"):
        text, explicit = _strip_file_prefix(item.value.strip())
        if explicit or not (text.startswith("/") or text[:3].upper() == "LF:"):
            found.append(_local("Executable", line, item.value, text, base, source))
    for item, line in _items(doc, "InputFile"):
        try:
            entry = parse_input_entry(item.value, line=line, column=item.column, key="InputFile")
        except JdlError as e:
            raise SandboxError(str(e.with_path(source))) from None
        if entry.catalogue:
            continue
        name, _, options = item.value.partition(",")
        text, _ = _strip_file_prefix(name.strip())
        found.append(_local("InputFile", line, item.value, text, base, source, options.strip()))
    seen: Dict[str, LocalFile] = {}
    for f in found:
        other = seen.get(f.name)
        if other is not None and other.path.resolve() != f.path.resolve():
            raise SandboxError(f"{source}:{f.line}: {f.attribute} {f.written!r} has the same file name as "
                               f"{other.attribute} {other.written!r} on line {other.line}: rename one")
        seen[f.name] = f
    return found


def rewrite(doc: JdlDocument, lfns: Dict[str, str]) -> JdlDocument:
    """The JDL with each shipped file's entry replaced by its LFN (`lfns`: the entry as written to the LFN; `LF:` and
    the entry's options for InputFile), and an `LF:` Executable written as the bare LFN the JobWrapper fetches."""
    exe = doc.entry("Executable")
    if exe is not None and isinstance(exe.value, String):
        written = exe.value.value
        text, _ = _strip_file_prefix(written.strip())
        if written in lfns:
            doc = doc.with_value("Executable", String(lfns[written]))
        elif text[:3].upper() == "LF:":
            doc = doc.with_value("Executable", String(text[3:].strip()))
    inputs = doc.entry("InputFile")
    if inputs is not None:
        def item(v: Scalar) -> Scalar:
            if isinstance(v, String) and v.value in lfns:
                _, _, options = v.value.partition(",")
                return String("LF:" + lfns[v.value] + ("," + options.strip() if options else ""))
            return v

        value = inputs.value
        new: Value = value
        if isinstance(value, ListValue):
            new = ListValue(tuple(item(v) for v in value.items))
        elif isinstance(value, String):
            new = item(value)
        doc = doc.with_value("InputFile", new)
    return doc


# -- 3. upload --


@dataclass(frozen=True)
class Shipped:
    """A local file in the sandbox: its LFN, whether an earlier submit's copy was reused, its size."""

    file: LocalFile
    lfn: str
    reused: bool
    size: int

    def to_dict(self) -> Dict[str, Any]:
        return {"attribute": self.file.attribute, "line": self.file.line, "local": str(self.file.path),
                "lfn": self.lfn, "reused": self.reused, "size": self.size}


def _digests(files: Sequence[LocalFile]) -> Tuple[str, Dict[Path, Digest]]:
    """The sandbox directory's hash over every file's name and content, and each file's size, adler32 and md5."""
    total = hashlib.sha256()
    digests: Dict[Path, Digest] = {}
    for f in sorted({f.path: f for f in files}.values(), key=lambda f: f.name):
        sha = hashlib.sha256()
        summer = Checksummer(md5=True)
        with open(f.path, "rb") as fh:
            for block in read_blocks(fh):
                sha.update(block)
                summer.update(block)
        digests[f.path] = summer.digest()
        total.update(f.name.encode() + b"\0" + sha.digest())
    return total.hexdigest()[:HASH_DIGITS], digests


def own_area(client: CentralClient) -> str:
    """The user's own catalogue area, from central (GET /areas)."""
    answer = client.areas()
    for a in answer.get("areas") or []:
        if a.get("granted") is None:
            return str(a["path"])
    raise SandboxError(f"user {answer.get('user')!r} has no own area in the catalogue (its name is not one path "
                       "component), so its local files cannot be shipped: register them in a granted area and name "
                       "them with LF:")


def _reusable(client: CentralClient, lfn: str, digest: Digest, elements: List[Dict[str, Any]]) -> bool:
    """Whether `lfn` is already registered with this content and one of its replicas checks out on its storage
    element (size and adler32); False when it is not registered. SandboxError when it holds other content."""
    try:
        entry = client.lookup_file(lfn)
    except CentralError as e:
        if e.status == 404:
            return False
        raise
    known = Digest(entry["size"], entry.get("adler32"), entry.get("md5"))
    if known.mismatches(digest):
        raise SandboxError(f"{lfn} is registered with other content ({known}, the local file is {digest}): "
                           "remove it or rename the local file")
    by_name = {e["name"].upper(): e for e in elements}
    for rep in entry.get("replicas") or []:
        known_se = by_name.get(str(rep["se"]).upper())
        if known_se is None:
            continue
        try:
            se: StorageElement = build_storage_element({"name": known_se["name"], "url": known_se["url"]})
            se.verify(rep["pfn"], Digest(digest.size, digest.adler32), remove=False)
            return True
        except (ConfigError, StorageError):
            continue
    return False


def ship(client: CentralClient, files: Sequence[LocalFile], se: Optional[str] = None,
         say: Any = None) -> Tuple[str, List[Shipped]]:
    """Upload (or reuse) every file into the user's sandbox directory; its LFN and what happened to each file."""
    from gridpilot.userupload import choose_element, storage_listing, upload_to

    area = own_area(client)
    elements, default = storage_listing(client)
    element = choose_element(elements, default, se)
    digest, digests = _digests(files)
    directory = posixpath.join(area, SANDBOX_DIR, digest)
    shipped: List[Shipped] = []
    done: Dict[Path, Shipped] = {}
    for f in files:
        if f.path in done:
            shipped.append(Shipped(f, done[f.path].lfn, True, done[f.path].size))
            continue
        lfn = posixpath.join(directory, f.name)
        d = digests[f.path]
        if _reusable(client, lfn, d, elements):
            s = Shipped(f, lfn, True, d.size)
        else:
            try:
                # With the digest its directory is named by: a file changed since is not registered there.
                upload_to(client, element, f.path, lfn, expected=d)
            except StorageError as e:
                raise ShipFailed(f, e) from e
            s = Shipped(f, lfn, False, d.size)
        if say is not None:
            say(f"{f.attribute} {f.written}: {'reused' if s.reused else 'uploaded to ' + element.name} as {lfn}")
        done[f.path] = s
        shipped.append(s)
    return directory, shipped


# -- the command --


def prepare(text: str, args: Sequence[str], source: str) -> Tuple[str, JdlDocument, List[LocalFile], List[str]]:
    """Substitute the arguments, parse, find the local files: everything checked before anything is sent."""
    from gridpilot.jdl.loader import parse_job

    substituted, warnings = substitute_arguments(text, args, source)
    try:
        job = parse_job(substituted, source)
    except JdlError as e:
        raise SandboxError(str(e)) from None
    files = find_local_files(job.document, Path(source).resolve().parent, source)
    return substituted, job.document, files, warnings


def cmd_submit(args: argparse.Namespace) -> int:
    from gridpilot import console
    from gridpilot.jdl.attributes import unknown_attributes
    from gridpilot.jdl.loader import decode
    from gridpilot.jdl.writer import write

    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise console.UsageError(f"{args.file}: cannot read: {e.strerror or e}") from None
    try:
        text = decode(data, args.file)
        substituted, doc, files, warnings = prepare(text, list(args.args or ()), args.file)
    except (JdlError, SandboxError) as e:
        raise console.UsageError(str(e)) from None
    for w in warnings:
        print(w, file=sys.stderr)
    for u in unknown_attributes(doc):
        print(f"{args.file}:{u.line}:{u.column}: warning: {u.message()}", file=sys.stderr)
    client = console.client_for(args)
    sandbox: Optional[Dict[str, Any]] = None
    if files:
        say = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        try:
            directory, shipped = ship(client, files, se=args.se, say=say)
        except (SandboxError, ConfigError) as e:
            raise console.UsageError(str(e)) from None
        except ShipFailed as e:
            raise console.Failed(f"{e}; nothing of it was registered and the job was not submitted (files shipped "
                                 "before it stay registered, and the next submit reuses them)") from None
        substituted = write(rewrite(doc, {s.file.written: s.lfn for s in shipped}))
        sandbox = {"dir": directory, "files": [s.to_dict() for s in shipped]}
    from gridpilot.masterjobs import collections_for  # a JDL with Split: its collections, read here (masterjobs.py)

    collections = collections_for(substituted, client)
    try:
        answer = client.submit_job(substituted, name=os.path.basename(args.file), collections=collections)
    except (CentralError, CentralUnreachable) as e:
        if sandbox is None:
            raise
        # One line: why, and what became of the files (kept: the corrected submit reuses them).
        kept = (f"the job was not queued; its {len(sandbox['files'])} shipped file(s) stay registered in "
                f"{sandbox['dir']}, and a submit of the same files reuses them")
        if isinstance(e, CentralError):
            where = f" at line {e.line}, column {e.column}" if e.line is not None else ""
            raise console.Failed(f"central refused ({e.status} {e.code}){where}: {e.message}; {kept}") from None
        print(f"gridpilot: {kept}", file=sys.stderr)
        raise
    job_id = int(answer["id"])
    # A JDL with Split made a masterjob: central says how many subjobs (central/splitting.py).
    subjobs = answer.get("subjobs")
    if args.json:
        if args.wait:  # the job as `gridpilot job ID --json` prints it once it ended
            return console.wait_json(client, job_id, interval=args.interval, timeout=args.timeout)
        out: Dict[str, Any] = {"id": job_id, "state": answer.get("state", "WAITING")}
        if subjobs is not None:
            out.update({k: answer[k] for k in ("subjobs", "first_subjob", "last_subjob", "split") if k in answer})
        if sandbox is not None:
            out["sandbox"] = sandbox
        console._print_json(out)
        return 0
    if subjobs is None:
        print(f"submitted job {job_id} ({args.file})", flush=True)
    else:
        print(f"submitted masterjob {job_id} ({args.file}): {subjobs} subjob{'' if subjobs == 1 else 's'}",
              flush=True)
    if not args.wait:
        return 0
    return console.watch(client, job_id, interval=args.interval, timeout=args.timeout)


__all__ = ["LocalFile", "SandboxError", "ShipFailed", "Shipped", "cmd_submit", "find_local_files", "own_area", "prepare",
           "rewrite", "ship", "substitute_arguments"]
