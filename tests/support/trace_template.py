"""A rendered trace compared line by line with a template in ALICE's format (tests/fixtures/traces/*.template; the
syntax is explained at the top of each template): literal text with {PLACEHOLDERS}, optional ("? ") and repeatable
("* ") lines, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

#: The generic placeholders; a template's own values (paths, names) are given by the test, escaped.
GENERIC = {
    "TIME": r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d\d \d\d:\d\d:\d\d",
    "HMS": r"\d\d:\d\d:\d\d",
    "INT": r"-?\d+",
    "NUM": r"-?\d+(?:\.\d+)?",
    "WORD": r"\S+",
    "JSON": r"\{.*\}",
    "PFN": r"file://\S+",
}
_PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")


@dataclass
class TemplateLine:
    number: int  # in the template file, for the failure message
    text: str
    pattern: "re.Pattern[str]"
    kind: str  # "one", "optional" ("? ") or "any" ("* ")


def _compile(text: str, values: Mapping[str, str]) -> "re.Pattern[str]":
    out = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        out.append(re.escape(text[pos:m.start()]))
        name = m.group(1)
        if name in GENERIC:
            out.append(GENERIC[name])
        elif name in values:
            out.append(values[name])
        else:
            raise KeyError(f"template placeholder {{{name}}} has no value")
        pos = m.end()
    out.append(re.escape(text[pos:]))
    return re.compile("".join(out))


def load(path: Path, values: Mapping[str, str]) -> List[TemplateLine]:
    """The template at `path`; `values`: a regex for each of its own placeholders (re.escape a literal value)."""
    lines = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        kind, text = "one", raw
        if raw.startswith("? "):
            kind, text = "optional", raw[2:]
        elif raw.startswith("* "):
            kind, text = "any", raw[2:]
        lines.append(TemplateLine(n, text, _compile(text, values), kind))
    return lines


def mismatch(template: Sequence[TemplateLine], actual: Sequence[str]) -> Optional[str]:
    """None when `actual` (rendered lines) follows the template from its first line to its last, else what differs
    first. Greedy: an optional or repeatable line takes what it matches, and the next template line goes on."""
    i = 0
    for t in template:
        if t.kind == "any":
            while i < len(actual) and t.pattern.fullmatch(actual[i]):
                i += 1
            continue
        if i < len(actual) and t.pattern.fullmatch(actual[i]):
            i += 1
            continue
        if t.kind == "optional":
            continue
        got = actual[i] if i < len(actual) else "(end of the trace)"
        return f"template line {t.number}:\n  expected {t.text}\n  got      {got}\n  (trace line {i + 1})"
    if i < len(actual):
        return f"the trace goes on after the template's last line: trace line {i + 1}: {actual[i]}"
    return None


def literal(values: Dict[str, str]) -> Dict[str, str]:
    """Literal values as placeholder regexes."""
    return {k: re.escape(v) for k, v in values.items()}


__all__ = ["GENERIC", "TemplateLine", "literal", "load", "mismatch"]
