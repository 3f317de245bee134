"""Splitting as ALICE writes it in a JDL: `Split`, its limits, and the `#alien...#` placeholders of the subjobs.

A JDL with `Split` is not one job but a masterjob whose subjobs do the work (central/splitting.py makes them).
This module holds what needs no database: reading and checking the split attributes (`gridpilot jdl check` and
submit use the same checks), cutting a list of input files into subjobs, and putting each subjob's values into
its placeholders. The semantics are JAliEn's job splitter (alien.taskQueue.jobsplit: JobSplitHelper, SplitParse,
SplitSE, SplitProduction, JobSplitter.checkEntryPattern), with the differences docs/users.md lists:

- `Split = "file"`: one subjob per input file. `"directory"` / `"parentdirectory"`: the files of one directory (or
  of one parent directory) together. `"se"`: the files whose replicas are on the same storage elements together.
  These three then cut each group into subjobs of at most SplitMaxInputFileNumber files and at most
  SplitMaxInputFileSize bytes (a file larger than the size limit alone).
- `Split = "production:N-M"`: M-N+1 subjobs without input files (Monte Carlo); #alien_split# is N, N+1, ... M.
- `#alien_counter#` is the subjob's number from 1 in split order; `#alien_counter_03i#` (printf's width, as
  JAliEn's `%03d`) pads it: 001, 002, ... `#alien_split#` is what the subjob was split on: its production number,
  its directory, its storage elements (joined with '_'), or its counter for `file`. `#alienfilename#`,
  `#aliendir#`, `#alienfulldir#` (prefix `first` or `last`: of the subjob's first or last file; the first by
  default) are its input file's base name, its directory's name, its full LFN.
- They are replaced in OutputDir, Output, OutputFile, OutputArchive and SplitArguments (appended to Arguments),
  where JAliEn replaces them.

JAliEn's splitter reads SplitMaxInputFileSize only when SplitMaxInputFileNumber is absent and its SE strategy
balances group halves; gridpilot applies both limits together and cuts in order, so a subjob never exceeds either.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from gridpilot.errors import JdlError
from gridpilot.jdl.filespecs import parse_size
from gridpilot.jdl.nodes import JdlDocument, ListValue, Number, String, Value

#: The strategies `Split` takes besides production:N-M (JAliEn's JobSplitHelper names them so).
STRATEGIES = ("file", "directory", "parentdirectory", "se")
#: The most subjobs a production may ask for here; central's own bound (CentralSettings.max_subjobs) is lower.
MAX_PRODUCTION = 1_000_000
#: The keys whose values take placeholders (JobSplitter.prepareSubJobJDL's).
SUBSTITUTED_KEYS = ("OutputDir", "Output", "OutputFile", "OutputArchive", "SplitArguments")

_PRODUCTION = re.compile(r"^production:\s*(\d{1,7})\s*-\s*(\d{1,7})$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"#alien([A-Za-z0-9_]*)#", re.IGNORECASE)
_COUNTER = re.compile(r"^_counter(?:_(0?)(\d{0,2})i)?$", re.IGNORECASE)
_FILE_PART = re.compile(r"^(first|last)?(filename|dir|fulldir)$", re.IGNORECASE)
_SPLIT_KEY_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SplitSpec:
    """What a JDL's split attributes say: the strategy, production's range, and the limits per subjob."""

    strategy: str
    first: int = 0
    last: int = 0
    max_files: Optional[int] = None
    max_bytes: Optional[int] = None

    @property
    def is_production(self) -> bool:
        return self.strategy == "production"

    def describe(self) -> str:
        return f"production:{self.first}-{self.last}" if self.is_production else self.strategy


@dataclass(frozen=True)
class InputFile:
    """One input file of a split: its LFN, its size in bytes, and the storage elements holding a replica."""

    lfn: str
    size: int = 0
    ses: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Piece:
    """One subjob's share: its input files (none for production) and its #alien_split# value."""

    files: Tuple[InputFile, ...]
    key: str


def _fail(value: Value, message: str) -> JdlError:
    return JdlError(message, value.line, value.column)


def _scalar_text(value: Value, key: str) -> str:
    v = value.items[0] if isinstance(value, ListValue) and len(value.items) == 1 else value
    if isinstance(v, String):
        return v.value.strip()
    if isinstance(v, Number):
        return v.text.strip()
    raise _fail(value, f"{key} must be a string")


def _limit(doc: JdlDocument, key: str, size: bool) -> Optional[int]:
    value = doc.get(key)
    if value is None:
        return None
    text = _scalar_text(value, key)
    if size and not text.isdigit():
        n = parse_size(text, line=value.line, column=value.column, key=key)
    elif text.isdigit() and len(text) <= 18:
        n = int(text)
    else:
        raise _fail(value, f"{key} must be a whole number{' of bytes or a size such as 2GB' if size else ''}, "
                           f"got {text!r:.40}")
    if n < 1:
        raise _fail(value, f"{key} must be at least 1, got {n}")
    return n


def split_spec(doc: JdlDocument) -> Optional[SplitSpec]:
    """The document's split, or None when it has no `Split`. JdlError at the offending value for a Split that is not
    one of STRATEGIES or production:N-M (N <= M), bad limits, a file split without input files, or a placeholder
    that is not one of those the module docstring lists (checked only in a split job: see below)."""
    value = doc.get("Split")
    for key in ("SplitMaxInputFileNumber", "SplitMaxInputFileSize", "SplitArguments"):
        if value is None and doc.get(key) is not None:
            entry = doc.entry(key)
            assert entry is not None
            raise JdlError(f"{key} is set but Split is not: without Split the job is not split", entry.line,
                           entry.column)
    if value is None:
        # A placeholder in a JDL without Split stays as written, as in ALICE: such a JDL is often a subjob's own
        # (LPM's productions write `SplitId = "#alien_counter#"` and an OutputDir with #alien_counter_03i# into
        # the JDLs it submits, examples/sim_o2_anchored.jdl), and central has always taken it.
        return None
    text = _scalar_text(value, "Split")
    m = _PRODUCTION.match(text)
    if m:
        first, last = int(m.group(1)), int(m.group(2))
        if first > last:
            raise _fail(value, f"Split = {text!r}: the first number must not exceed the last")
        if last - first + 1 > MAX_PRODUCTION:
            raise _fail(value, f"Split = {text!r} asks {last - first + 1} subjobs, at most {MAX_PRODUCTION}")
        spec = SplitSpec("production", first, last)
    elif text.lower() in STRATEGIES:
        spec = SplitSpec(text.lower(), max_files=_limit(doc, "SplitMaxInputFileNumber", False),
                         max_bytes=_limit(doc, "SplitMaxInputFileSize", True))
        if doc.get("InputData") is None and doc.get("InputDataCollection") is None:
            raise _fail(value, f"Split = {text!r} splits input files, but the JDL has neither InputData nor "
                               "InputDataCollection")
    else:
        raise _fail(value, f"Split must be one of {', '.join(STRATEGIES)} or production:N-M, got {text!r:.60}")
    check_placeholders(doc)
    return spec


def check_placeholders(doc: JdlDocument) -> None:
    """JdlError at the first `#alien...#` placeholder of a split job that is not one substitute() replaces."""
    for key in SUBSTITUTED_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        items = value.items if isinstance(value, ListValue) else (value,)
        for item in items:
            if not isinstance(item, String):
                continue
            for m in _PLACEHOLDER.finditer(item.value):
                if not _known(m.group(1)):
                    raise _fail(item, f"{key}: unknown placeholder {m.group(0)}; known: #alien_counter#, "
                                      "#alien_counter_03i# (any width), #alien_split#, #alienfilename#, #aliendir#, "
                                      "#alienfulldir# (these three also with first or last: #alienlastfilename#)")


def _known(name: str) -> bool:
    return bool(_COUNTER.match(name) or name.lower() == "_split" or _FILE_PART.match(name))


def substitute(text: str, counter: int, piece: Piece) -> str:
    """`text` with its placeholders replaced for the subjob numbered `counter` (from 1) that got `piece`."""

    def one(m: "re.Match[str]") -> str:
        name = m.group(1)
        c = _COUNTER.match(name)
        if c:
            zero, width = c.group(1) or "", c.group(2) or ""
            return f"{counter:{zero}{width}d}" if width else str(counter)
        if name.lower() == "_split":
            return piece.key
        f = _FILE_PART.match(name)
        if f is None or not piece.files:
            return m.group(0)
        lfn = piece.files[-1 if (f.group(1) or "").lower() == "last" else 0].lfn
        part = f.group(2).lower()
        if part == "filename":
            return posixpath.basename(lfn)
        if part == "dir":
            return posixpath.basename(posixpath.dirname(lfn))
        return lfn

    return _PLACEHOLDER.sub(one, text)


# -- cutting input files into subjobs --


def _group_key(spec: SplitSpec, f: InputFile) -> str:
    if spec.strategy == "directory":
        return posixpath.dirname(f.lfn)
    if spec.strategy == "parentdirectory":
        return posixpath.dirname(posixpath.dirname(f.lfn))
    if spec.strategy == "se":
        return ",".join(sorted(f.ses))
    return f.lfn


def _chunks(files: Sequence[InputFile], max_files: Optional[int], max_bytes: Optional[int]) -> List[List[InputFile]]:
    out: List[List[InputFile]] = []
    cur: List[InputFile] = []
    size = 0
    for f in files:
        full = max_files is not None and len(cur) >= max_files
        heavy = max_bytes is not None and cur and size + f.size > max_bytes
        if cur and (full or heavy):
            out.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += f.size
    if cur:
        out.append(cur)
    return out


def pieces(spec: SplitSpec, files: Sequence[InputFile]) -> List[Piece]:
    """The subjobs' shares, in order: production's numbers, else the groups in the order of their first file, each
    cut by the limits. `file` ignores the limits (one file each, as JAliEn)."""
    if spec.is_production:
        return [Piece((), str(n)) for n in range(spec.first, spec.last + 1)]
    groups: Dict[str, List[InputFile]] = {}
    for f in files:
        groups.setdefault(_group_key(spec, f), []).append(f)
    out: List[Piece] = []
    for key, members in groups.items():
        if spec.strategy == "file":
            out.append(Piece(tuple(members), ""))
            continue
        label = _SPLIT_KEY_SAFE.sub("_", key).strip("_") if spec.strategy == "se" else key
        for chunk in _chunks(members, spec.max_files, spec.max_bytes):
            out.append(Piece(tuple(chunk), label))
    if spec.strategy == "file":
        out = [Piece(p.files, str(i)) for i, p in enumerate(out, 1)]
    return out


__all__ = ["MAX_PRODUCTION", "STRATEGIES", "SUBSTITUTED_KEYS", "InputFile", "Piece", "SplitSpec",
           "check_placeholders", "pieces", "split_spec", "substitute"]
