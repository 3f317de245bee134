"""The JobRunner's node probe, posted to central (POST /nodes/probe, central/nodeprobes.py) once per boot and again
when it changed.

Every pilot probes its node at start (pilot/nodeprobe.py, the slow parts cached per boot); many pilots run on one
node in one boot, one after the other, and all would post the same probe. So the runner remembers in its work
directory (POSTED_NAME) what it posted last: the boot, the probe's digest (probedigest.py: without timings, free
memory and disk, central's clock offset), the host and central's URL. A later start in the same boot with the same
digest, host and central posts nothing; a new boot, a changed probe (a runtime that now starts, a GPU added, the
pilot upgraded) or another central posts again. The record is written only once central took the probe, so a probe
central did not get (unreachable: held and retried by the runner's node reports, pilot/nodereports.py; refused: 4xx,
logged and dropped) is posted again at the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import orjson

from gridpilot import __version__, probedigest
from gridpilot.config import PilotConfig
from gridpilot.private_files import write_private
from gridpilot.pilot.nodereports import NodeReports

POSTED_NAME = "node-probe-posted.json"


def payload(probe: Mapping[str, Any], host: str, version: str = __version__) -> Dict[str, Any]:
    """What is posted: the probe with the agreed top-level `host` (the pilot's node, its site map's `node`) and
    `pilot_version`."""
    return dict(probe, host=host, pilot_version=version)


def record_of(body: Mapping[str, Any], central_url: str) -> Dict[str, Any]:
    """What says "this was posted": a later start compares its own to it."""
    # The digest of what central hashes too (the body but its host), so the two name a probe alike in the logs.
    digest = probedigest.digest({k: v for k, v in body.items() if k != "host"})
    return {"boot_id": body.get("boot_id"), "digest": digest, "host": body.get("host"), "central": central_url}


def posted_before(path: Path, record: Mapping[str, Any]) -> bool:
    """True when `path` holds this very record: the same boot (known), probe, host and central."""
    if record.get("boot_id") is None:
        return False
    try:
        return bool(orjson.loads(path.read_bytes()) == dict(record))
    except (OSError, orjson.JSONDecodeError):
        return False


def remember(path: Path, record: Mapping[str, Any]) -> None:
    """Written aside then renamed: a pilot starting beside this one never reads half a record. A record that cannot
    be written only means the next start posts again."""
    try:
        write_private(path, orjson.dumps(dict(record)))
    except OSError:
        pass


def at_start(cfg: PilotConfig, probe: Optional[Mapping[str, Any]], reports: NodeReports,
             say: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """Queue the probe for central unless this boot already posted the same (said either way). Returns the record
    queued, or None when nothing is."""
    if probe is None or not cfg.central_url:
        return None
    body = payload(probe, cfg.node)
    record = record_of(body, cfg.central_url)
    path = Path(cfg.workdir) / POSTED_NAME
    if posted_before(path, record):
        say(f"Node probe unchanged since it was posted to central this boot (digest {record['digest'][:12]}): "
            f"not posted again")
        return None

    def sent(answer: Mapping[str, Any]) -> None:
        remember(path, record)
        say(f"Node probe posted to central (digest {record['digest'][:12]}, "
            f"{'a change: history kept' if answer.get('changed') else 'unchanged at central'})")

    reports.probe(body, sent)
    return record


__all__ = ["POSTED_NAME", "at_start", "payload", "posted_before", "record_of", "remember"]
