"""What of a node probe (`gridpilot node check --json`, pilot/nodeprobe.py) says what the node is, and its digest.

The pilot posts its probe to central once per boot and again when it changes (pilot/probepost.py); central keeps a
history row only when it changed (central/nodeprobes.py). Both must agree on "changed", so both hash the probe here,
left out what moves on its own between two probes of the same node: how long things took, the cache's hits and
boot, central's clock offset and round trip, free memory and free disk, the pilot's own cgroup and work directory,
and the texts of fatal/warnings (they quote free space and clock offsets; `ok` stays in). A reboot alone is no change: the boot id is left out too.

At the bottom layer (beside states.py) because the pilot may not import central nor central the pilot.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import orjson

#: Top-level keys that are not the node: when and how the probe ran, what central looked like from here.
VOLATILE_TOP = frozenset({"seconds", "cache", "boot_id", "central", "fatal", "warnings"})
#: Keys left out at any depth: timings.
VOLATILE_ANYWHERE = frozenset({"seconds", "round_trip_s", "clock_offset_s", "hits"})
#: (section, key) pairs that change while the node stays what it is: free memory and disk, and where this pilot
#: runs (its own cgroup, made per pilot: the runner's slot cgroup, a batch job's; its work directory).
VOLATILE_IN_SECTION = frozenset({("memory", "available_mb"), ("disk", "free_mb"), ("disk", "workdir"),
                                 ("cgroups", "path")})


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_ANYWHERE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def stable_part(probe: Mapping[str, Any]) -> dict:
    """The probe without its volatile fields."""
    out = {}
    for section, value in probe.items():
        if section in VOLATILE_TOP:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if (section, k) not in VOLATILE_IN_SECTION}
        out[section] = _strip(value)
    return out


def digest(probe: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the probe's stable part, keys sorted: equal for two probes of an unchanged node."""
    return hashlib.sha256(orjson.dumps(stable_part(probe), option=orjson.OPT_SORT_KEYS)).hexdigest()


__all__ = ["VOLATILE_ANYWHERE", "VOLATILE_IN_SECTION", "VOLATILE_TOP", "digest", "stable_part"]
