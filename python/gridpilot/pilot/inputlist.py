"""The JobWrapper writes the JDL's `InputDataList` (`wn.xml`): the job's InputData, in the work directory, before the
payload starts, as JAliEn's JobWrapper does after its stage-in (jdl/datalist.py says what ALICE does and where
gridpilot differs; the names and formats are checked there, at `jdl check` and submission).

`xml-single` is ALICE's XML collection, laid out as JAliEn's alien.catalogue.XmlCollection writes one: `<alien>`,
one `<collection name="jobinputdata">`, one `<event name="N">` per file holding one `<file .../>` whose `name` is
the base name, `lfn` the LFN and `turl` where to open it, then an `<info .../>`. JAliEn's turl is always
`alien://LFN`; gridpilot's is `file://PATH`, the copy the wrapper staged (PATH as the payload sees it, inside its
container when there is one), and `alien://LFN` only for a `nodownload` input, which is not staged. Every
attribute is escaped (JAliEn leaves `lfn` unescaped: an LFN with `&` or `"` makes its file unreadable XML).
`txt-list` is one LFN a line. Each is readable by jdl/collection.py's reader, the one `InputDataCollection` uses.

The file is written to a temporary name in the work directory and renamed: the payload finds it whole or not at
all. It may not replace a file already there (a staged input of the same name).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from gridpilot.errors import GridpilotError
from gridpilot.jdl import datalist

#: The collection name JAliEn gives the list it writes.
COLLECTION_NAME = "jobinputdata"


class InputListError(GridpilotError):
    """The InputDataList could not be written (the job ends as ERROR_IB, INPUT_FILES): why, in one line."""


@dataclass(frozen=True)
class ListedInput:
    """One InputData entry as the list shows it: its LFN, and the copy the wrapper staged (None: nodownload)."""

    lfn: str
    local: Optional[Path] = None
    size: Optional[int] = None


def _xml_char_ok(c: str) -> bool:
    o = ord(c)
    # XML 1.0's Char production: no C0 control but tab, line feed and carriage return; no surrogate; not U+FFFE/F.
    return c in "\t\n\r" or (o >= 0x20 and not 0xD800 <= o <= 0xDFFF and o not in (0xFFFE, 0xFFFF))


def _attr(value: str) -> str:
    """`value` as a double-quoted XML attribute. White space other than a blank is written as a character
    reference, which XML's attribute normalisation would otherwise turn into blanks."""
    bad = next((c for c in value if not _xml_char_ok(c)), None)
    if bad is not None:
        raise InputListError(f"{value[:80]!r} holds the character U+{ord(bad):04X}, which XML cannot hold")
    out = (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
           .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))
    return f'"{out}"'


def _unique(entries: Iterable[ListedInput]) -> List[ListedInput]:
    # JAliEn's collection is a set of LFNs in InputData's order: an LFN listed twice is one file.
    seen = set()
    out = []
    for e in entries:
        if e.lfn not in seen:
            seen.add(e.lfn)
            out.append(e)
    return out


def render_xml(entries: Sequence[ListedInput], *, now: Optional[float] = None) -> str:
    """The `xml-single` collection of `entries` (none: a collection without event)."""
    stamp = time.time() if now is None else now
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<alien>", f"  <collection name={_attr(COLLECTION_NAME)}>"]
    for n, e in enumerate(_unique(entries), 1):
        turl = f"file://{e.local}" if e.local is not None else f"alien://{e.lfn}"
        size = "" if e.size is None else f" size={_attr(str(e.size))}"
        lines += [f"    <event name={_attr(str(n))}>",
                  f"      <file name={_attr(e.lfn.rsplit('/', 1)[-1])} lfn={_attr(e.lfn)}{size} turl={_attr(turl)} "
                  f'type="f" />',
                  "    </event>"]
    date = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(stamp))
    lines += [f'    <info command="gridpilot JobWrapper" creator="gridpilot" date={_attr(date)} '
              f'timestamp="{int(stamp * 1000)}" />',
              "  </collection>", "</alien>", ""]
    return "\n".join(lines)


def render_txt(entries: Sequence[ListedInput]) -> str:
    """The `txt-list` of `entries`: one LFN a line."""
    lines = []
    for e in _unique(entries):
        if any(c in e.lfn for c in "\n\r\0"):
            raise InputListError(f"{e.lfn[:80]!r} holds a line break or NUL, which a txt-list cannot hold")
        lines.append(e.lfn + "\n")
    return "".join(lines)


def write_input_list(workdir: Path, name: str, fmt: Optional[str], entries: Sequence[ListedInput]) -> Path:
    """Write the list `name` (the JDL's InputDataList) of `entries` in format `fmt` (its InputDataListFormat; None:
    the default) into `workdir`, whole or not at all. InputListError says why it was not written."""
    problem = datalist.name_problem(name)
    if problem is not None:
        raise InputListError(problem)
    kind = datalist.format_of(fmt)
    if kind is None:
        raise InputListError(datalist.format_problem(fmt or "") or f"InputDataListFormat {fmt!r} is not written")
    target = workdir / name
    if os.path.lexists(target):
        raise InputListError(f"InputDataList {name} would replace {name}, already in the work directory "
                             f"(an input of the same name?)")
    text = render_xml(entries) if kind == datalist.XML_SINGLE else render_txt(entries)
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(dir=workdir, prefix=f".{name[:200]}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise InputListError(f"InputDataList {name} could not be written: {e.strerror or e}") from e
    return target


__all__ = ["COLLECTION_NAME", "InputListError", "ListedInput", "render_txt", "render_xml", "write_input_list"]
