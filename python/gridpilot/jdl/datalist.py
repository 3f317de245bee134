"""`InputDataList` and `InputDataListFormat`: the file, in the job's work directory, that lists the job's input data
for the payload (ALICE's `InputDataList = "wn.xml"; InputDataListFormat = "xml-single";`), and its format.

What ALICE does (JAliEn's JobWrapper, dumpInputDataList, read in HaakonAndre/JAliEnDev
src/main/java/alien/site/JobWrapper.java): after the inputs are staged, it writes the JDL's InputData LFNs as an
XML collection (alien.catalogue.XmlCollection's layout, collection name `jobinputdata`) into the work directory
under the InputDataList name. It knows only `xml-single`; any other format, or none, is logged on the node and
nothing is written, and the name is joined to the work directory unchecked. gridpilot keeps the file and the
layout, and refuses at `jdl check` / submission what JAliEn would silently ignore or let escape the work directory:
a name that is not a plain file name, and a format it does not write. Without a format it writes `xml-single`, the
format ALICE's analysis plugin (AliAnalysisAlien) writes by default.

The formats:
  * `xml-single`: ALICE's XML collection, one `event` per input file (pilot/inputlist.py writes it);
  * `txt-list`: one LFN a line;
  * `merge:LFN`: AliEn's 2007 form (one JDL of tests/fixtures/jdl/alice writes it, naming the same collection as
    its InputDataCollection): written as `xml-single` of this job's InputData.
"""

from __future__ import annotations

from typing import Optional, Tuple

XML_SINGLE = "xml-single"
TXT_LIST = "txt-list"
#: The formats written, by the name a JDL gives them.
FORMATS: Tuple[str, ...] = (XML_SINGLE, TXT_LIST)
#: The format of an InputDataList whose JDL names none.
DEFAULT_FORMAT = XML_SINGLE
MERGE_PREFIX = "merge:"
#: The longest InputDataList name (a file name on every file system the pilot runs on).
MAX_NAME = 255


def name_problem(name: str) -> Optional[str]:
    """Why `name` cannot be an InputDataList (None: it can): it must be a plain file name in the work directory."""
    if "/" in name or "\\" in name:
        return f"InputDataList {name!r} must be a plain file name in the job's work directory (no '/')"
    if name.strip() in (".", ".."):
        return f"InputDataList {name!r} is not a file name"
    if name != name.strip():
        return f"InputDataList {name!r} starts or ends with white space"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        return f"InputDataList is longer than {MAX_NAME} bytes"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return f"InputDataList {name!r} holds a control character"
    return None


def format_of(text: Optional[str]) -> Optional[str]:
    """The format (one of FORMATS) that InputDataListFormat `text` stands for; DEFAULT_FORMAT for None; None for a
    format gridpilot does not write."""
    if text is None:
        return DEFAULT_FORMAT
    t = text.strip()
    if t in FORMATS:
        return t
    if t.startswith(MERGE_PREFIX) and t[len(MERGE_PREFIX):].strip():
        return XML_SINGLE
    return None


def format_problem(text: str) -> Optional[str]:
    """Why InputDataListFormat `text` is refused (None: it is written)."""
    if format_of(text) is not None:
        return None
    return (f"InputDataListFormat {text.strip()[:80]!r} is not one gridpilot writes: {', '.join(FORMATS)} "
            f"(or {MERGE_PREFIX}LFN, written as {XML_SINGLE})")


__all__ = ["DEFAULT_FORMAT", "FORMATS", "MAX_NAME", "TXT_LIST", "XML_SINGLE", "format_of", "format_problem",
           "name_problem"]
