"""The file lists a split job reads its input files from (`InputDataCollection`): ALICE's XML collections and
plain-text lists.

An XML collection is what ALICE's `find -x` writes and what JAliEn's XmlCollection reads:
`<alien><collection name="..."><event name="1"><file name="x.root" lfn="/alice/.../x.root" .../></event>...`;
each `file` element's `lfn` (else its `turl` without `alien://`) is one input. A plain-text list has one LFN a line,
written `LF:/path` (the prefix may be left out); blank lines and lines starting with `#` are skipped.
Both are read whole before anything is queued, so a bad entry refuses the submission with the line it is on.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import List

from gridpilot.errors import JdlError

#: The most entries one collection may list (a masterjob has at most CentralSettings.max_subjobs subjobs anyway).
MAX_ENTRIES = 100_000
#: The longest collection text read (bytes of UTF-8).
MAX_BYTES = 16 << 20
MAX_LFN = 1024


def _lfn(text: str, where: str, name: str) -> str:
    path = text.strip()
    if path[:3].upper() == "LF:":
        path = path[3:].strip()
    if path.startswith("alien://"):
        path = path[len("alien://"):]
    path = path.split(",", 1)[0].strip()
    if not path.startswith("/") or len(path) > MAX_LFN or any(c in path for c in "\0\n\r"):
        raise JdlError(f"collection {name}: {where}: {text.strip()[:80]!r} is not an LFN (an absolute path of at most "
                       f"{MAX_LFN} characters)", 0, 0)
    return path


def parse_collection(text: str, name: str = "collection") -> List[str]:
    """The LFNs `text` lists, in order (XML when it starts with '<', else one a line). JdlError naming `name` and
    where in it, for anything that is not a list of LFNs, an empty list, or one over MAX_ENTRIES/MAX_BYTES."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise JdlError(f"collection {name} is over {MAX_BYTES >> 20} MB", 0, 0)
    body = text.lstrip("\ufeff \t\r\n")
    lfns = _xml(body, name) if body.startswith("<") else _lines(body, name)
    if not lfns:
        raise JdlError(f"collection {name} lists no file", 0, 0)
    if len(lfns) > MAX_ENTRIES:
        raise JdlError(f"collection {name} lists {len(lfns)} files, at most {MAX_ENTRIES}", 0, 0)
    return lfns


def _lines(text: str, name: str) -> List[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(_lfn(line, f"line {n}", name))
            if len(out) > MAX_ENTRIES:
                break
    return out


def _xml(text: str, name: str) -> List[str]:
    # No document type: entity definitions are how an XML file grows without bound when read.
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise JdlError(f"collection {name}: a DOCTYPE or ENTITY is not allowed in a collection", 0, 0)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line, column = e.position
        raise JdlError(f"collection {name} is not well-formed XML: {e}", line, column + 1) from None
    out = []
    for i, f in enumerate(root.iter("file"), 1):
        ref = f.get("lfn") or f.get("turl")
        if not ref:
            raise JdlError(f"collection {name}: file element {i} has neither lfn nor turl", 0, 0)
        out.append(_lfn(ref, f"file element {i}", name))
        if len(out) > MAX_ENTRIES:
            break
    return out


__all__ = ["MAX_BYTES", "MAX_ENTRIES", "parse_collection"]
