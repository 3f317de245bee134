"""Unknown attributes in a JDL, with a did-you-mean: `TLL = 3600;` is valid JDL, but nobody reads TLL, so the job
would silently run with the default TTL. ALICE accepts any key without a word; `gridpilot jdl check` warns
(and `--strict` refuses), and `gridpilot submit` warns.

An attribute is known when gridpilot's model reads it (model.KNOWN_KEYS), when ALICE's central services, LPM or
the job splitter read it (ALICE_KEYS: gridpilot keeps those in `extra`), when the demo reads it, or when the JDL
exports it through JDLVariables (a user variable: `DataPeriod = "LHC23f"; JDLVariables = {"DataPeriod"};`).
Keys are compared without case, as ALICE does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from gridpilot.jdl.model import KNOWN_KEYS
from gridpilot.jdl.nodes import JdlDocument, ListValue, String

#: Keys of ALICE's JDLs that the grid's other services read, not the pilot: the splitter (Split*), resubmission
#: and failure policies, the job's tags and type, LPM's production bookkeeping, the mail on completion.
ALICE_KEYS: Tuple[str, ...] = (
    "CPULimit", "Email", "GUIDFile", "JDLArguments", "JDLPath", "JDLProcessor", "JobTag", "LegoResubmitZombies",
    "LPMActivity", "LPMAnchorPassName", "LPMAnchorProduction", "LPMAnchorRun", "LPMAnchorYear", "LPMChainID",
    "LPMInteractionType", "LPMJobTypeID", "LPMPassName", "LPMProductionTag", "LPMProductionType", "LPMRawPass",
    "LPMRunNumber", "MasterResubmitThreshold", "MaxFailFraction", "MaxInitFailed", "MaxResubmitFraction",
    "MaxWaitingTime", "OrigRequirements", "Split", "SplitArguments", "SplitId", "SplitMaxInputFileNumber",
    "SplitMaxInputFileSize", "Type",
)

#: Keys only `gridpilot demo` reads (examples/demo/*.jdl): what the job is expected to end as.
DEMO_KEYS: Tuple[str, ...] = ("DemoExpect", "DemoExpectKillReason")

#: Every key a JDL may hold without a warning, by lower-case name, with the spelling suggestions use.
_KNOWN: Dict[str, str] = {k.lower(): k for k in (*KNOWN_KEYS, *ALICE_KEYS, *DEMO_KEYS)}

#: How alike (difflib's ratio, 0-1) a known key must be to be suggested. At 0.6 (difflib's default) a swapped or
#: doubled letter in a three-letter key still finds it (TLL -> TTL is 0.67) and a short unrelated name (Foo,
#: Energy) finds nothing; a long user variable may find a lookalike (OutputLevel -> OutputFile), which is only a hint.
SUGGESTION_CUTOFF = 0.6


@dataclass(frozen=True)
class UnknownAttribute:
    """`key` at line, column (from 1) is read by nobody; `suggestion` is the known key it most resembles."""

    key: str
    line: int
    column: int
    suggestion: Optional[str]

    def message(self) -> str:
        hint = f" (did you mean '{self.suggestion}'?)" if self.suggestion else ""
        return f"unknown attribute '{self.key}'{hint}"

    def to_dict(self) -> Dict[str, object]:
        return {"attribute": self.key, "line": self.line, "column": self.column, "suggestion": self.suggestion}


def suggest(key: str) -> Optional[str]:
    """The known key (its ALICE spelling) closest to `key`, ignoring case, or None when none is close enough."""
    close = difflib.get_close_matches(key.lower(), list(_KNOWN), n=1, cutoff=SUGGESTION_CUTOFF)
    return _KNOWN[close[0]] if close else None


def is_known(key: str) -> bool:
    return key.lower() in _KNOWN


def _exported(doc: JdlDocument) -> FrozenSet[str]:
    """The lower-case names JDLVariables lists (whatever else is wrong with it is the model's to say)."""
    value = doc.get("JDLVariables")
    items = value.items if isinstance(value, ListValue) else (value,)
    return frozenset(i.value.strip().lower() for i in items if isinstance(i, String))


def unknown_attributes(doc: JdlDocument) -> List[UnknownAttribute]:
    """The document's unknown attributes, in the order written."""
    exported = _exported(doc)
    return [UnknownAttribute(e.key, e.line, e.column, suggest(e.key))
            for e in doc.entries if not is_known(e.key) and e.key.lower() not in exported]
