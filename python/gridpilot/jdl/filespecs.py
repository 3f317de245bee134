"""The small languages inside JDL strings: output specs, input file entries and sizes.

Output spec (Output, OutputFile, OutputArchive, OutputErrorE entries):

    [archive ':'] pattern [',' pattern]* ['@' option [',' option]*]

with options `disk=2` / `tape=1` (how many replicas on storage of that kind), `ALICE::CERN::EOS` (that storage
element), `!ALICE::X::Y` (never that one), `*ALICE::X::Y` (an extra replica copied there asynchronously, after
the job, so a slow storage element does not hold the job in SAVING) and `noarchive` (or `no_archive`).

What ALICE accepts and this accepts too: an archive named without `.zip` (`log_archive:*.log`; AliEn and JAliEn
build a zip of exactly that name), empty names between commas (`AliESDfriends_v1.root,@disk=1`, in AliPhysics'
calibration JDLs; JAliEn skips blank names) and empty options (`@disk=1,`). `noarchive` is AliEn's flag from before
v2.18, when plain output files were put in a default archive unless it was given; since then (and here) a plain
file is never archived, so the flag is accepted and changes nothing. On an archive it makes no sense and is refused.

Input entry (InputFile, InputData, InputDataCollection): `LF:/alice/sim/2024/file.root[,nodownload]`, where `LF:`
marks a catalogue path and `nodownload` asks for the file to be read remotely instead of copied to the work
directory.

Sizes (MemorySize, WorkDirectorySize): a number and a unit K, M, G or T (optionally followed by B or iB), in
powers of 1024: "8GB", "512 MB", "1.5T".
"""

from __future__ import annotations

import re
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from gridpilot.errors import JdlError

#: Where an output goes when its spec names no storage: two replicas on disk, as ALICE does.
DEFAULT_OUTPUT_QOS: Mapping[str, int] = {"disk": 2}

#: Logs kept for a job that ends in error when the JDL has no OutputErrorE.
DEFAULT_ERROR_OUTPUT = "log_archive.zip:std*@disk=1"

#: How `noarchive` is written back; AliEn's JobAgent also knew it as `no_archive`.
NOARCHIVE = "noarchive"
_NOARCHIVE_SPELLINGS = frozenset({"noarchive", "no_archive"})

_SE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(::[A-Za-z0-9_.-]+){2}$")
_QOS = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\d{1,3})$", re.ASCII)
_SIZE = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,9})?)\s*([KMGT])(?:i?B)?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class OutputSpec:
    """One output entry: an archive (or None for plain files), the file patterns, and where replicas go."""

    archive: Optional[str]
    members: Tuple[str, ...]
    qos: Mapping[str, int] = field(default_factory=dict)
    ses: Tuple[str, ...] = ()
    excluded_ses: Tuple[str, ...] = ()
    async_ses: Tuple[str, ...] = ()
    #: `noarchive` was given: kept so the spec writes back as it was; plain files are never archived anyway.
    noarchive: bool = False

    @property
    def replicas(self) -> int:
        """How many copies are asked for: QoS counts, named storage elements and asynchronous ones."""
        qos = self.qos or ({} if self.ses or self.async_ses else DEFAULT_OUTPUT_QOS)
        return sum(qos.values()) + len(self.ses) + len(self.async_ses)

    def to_text(self) -> str:
        """The spec in canonical form; parse_output_spec(spec.to_text()) == spec."""
        head = ",".join(self.members)
        if self.archive is not None:
            head = f"{self.archive}:{head}"
        opts = [f"{k}={v}" for k, v in self.qos.items()]
        opts += list(self.ses) + ["!" + s for s in self.excluded_ses] + ["*" + s for s in self.async_ses]
        opts += [NOARCHIVE] if self.noarchive else []
        return head + ("@" + ",".join(opts) if opts else "")

    def to_dict(self) -> Dict[str, object]:
        return {
            "archive": self.archive,
            "members": list(self.members),
            "qos": dict(self.qos),
            "ses": list(self.ses),
            "excluded_ses": list(self.excluded_ses),
            "async_ses": list(self.async_ses),
            "noarchive": self.noarchive,
            "replicas": self.replicas,
        }


def parse_output_spec(text: str, *, line: int = 0, column: int = 0, archive_required: bool = False) -> OutputSpec:
    """Parse `archive.zip:f1,f2@disk=2,*ALICE::X::Y`. Raises JdlError at (line, column) saying what is wrong."""

    def fail(msg: str) -> JdlError:
        return JdlError(f"{msg} in output spec {text!r}", line, column)

    head, at, tail = text.partition("@")
    archive: Optional[str] = None
    if ":" in head:
        archive, _, head = head.partition(":")
        archive = archive.strip()
        if not archive:
            raise fail("empty archive name before ':'")
        if any(c in archive for c in "/*?,"):
            raise fail(f"archive name {archive!r} must be a plain file name")
    elif archive_required:
        raise fail("expected an archive name and ':' (as in \"log_archive.zip:stdout,stderr@disk=1\")")
    members = tuple(m for m in (m.strip() for m in head.split(",")) if m)
    if not members:
        raise fail("expected a file name or pattern" + (f" after {archive!r}:" if archive is not None else ""))
    qos: Dict[str, int] = {}
    ses: List[str] = []
    excluded: List[str] = []
    later: List[str] = []
    noarchive = False
    if at:
        for raw in tail.split(","):
            opt = raw.strip()
            if not opt:
                continue
            if opt.lower() in _NOARCHIVE_SPELLINGS:
                if archive is not None:
                    raise fail(f"{opt!r} is for single files, and {archive!r} is an archive")
                noarchive = True
                continue
            m = _QOS.match(opt)
            if m:
                tag = m.group(1).lower()
                if tag in qos:
                    raise fail(f"{tag!r} given twice")
                qos[tag] = int(m.group(2))
                continue
            if "=" in opt:
                raise fail(f"storage option {opt!r} should be a tag and a count, e.g. disk=2")
            target = ses
            if opt[0] in "!*":
                target = excluded if opt[0] == "!" else later
                opt = opt[1:].strip()
            if not _SE_NAME.match(opt):
                raise fail(
                    f"{opt!r} is neither a count such as disk=2 nor a storage element such as ALICE::CERN::EOS "
                    f"(nor noarchive)"
                )
            target.append(opt)
    return OutputSpec(archive, members, qos, tuple(ses), tuple(excluded), tuple(later), noarchive)


@dataclass(frozen=True)
class InputEntry:
    """One input file: its path (without the `LF:` prefix), whether it had the prefix, and `nodownload`."""

    path: str
    catalogue: bool = True
    nodownload: bool = False

    def to_dict(self) -> Dict[str, object]:
        return {"path": self.path, "catalogue": self.catalogue, "nodownload": self.nodownload}


_INPUT_OPTIONS = ("nodownload",)


def parse_input_entry(text: str, *, line: int = 0, column: int = 0, key: str = "InputData") -> InputEntry:
    """Parse `LF:/alice/data/x.root,nodownload`. Raises JdlError at (line, column)."""
    path, *options = (p.strip() for p in text.split(","))
    catalogue = path[:3].upper() == "LF:"
    if catalogue:
        path = path[3:].strip()
    if not path:
        raise JdlError(f"expected a file path in {key} entry {text!r}", line, column)
    nodownload = False
    for opt in options:
        if opt.lower() == "nodownload":
            nodownload = True
        else:
            known = ", ".join(_INPUT_OPTIONS)
            raise JdlError(f"unknown option {opt!r} in {key} entry {text!r}; known options: {known}", line, column)
    return InputEntry(path, catalogue, nodownload)


def parse_size(text: str, *, line: int = 0, column: int = 0, key: str = "size") -> int:
    """Bytes in a size such as "8GB" (units K, M, G, T in powers of 1024; a unit is required)."""
    m = _SIZE.match(text)
    if not m:
        raise JdlError(
            f"{key} {text!r} is not a size: expected a number and a unit K, M, G or T, e.g. \"8GB\"", line, column
        )
    n = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise JdlError(f"{key} must be more than zero, got {text!r}", line, column)
    return n
