"""The user's side of masterjobs: `gridpilot masterjob ID [-v] [--json]`, and the collections `gridpilot submit` reads
for a JDL with Split (central/splitting.py makes the masterjob and its subjobs; docs/users.md, "Many jobs from one").

A collection named in InputDataCollection is read here, at submit time, and its text sent with the JDL: central does
not read storage elements. `LF:/path` is downloaded from the catalogue (verified by size and checksum like every
transfer); a name without `LF:` is a file on this machine, relative to the current directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from gridpilot import cli_codes
from gridpilot.client import CentralClient
from gridpilot.console import UsageError, _print_json, client_for
from gridpilot.errors import ConfigError, JdlError, StorageError
from gridpilot.jdl import parse_job
from gridpilot.jdl.collection import MAX_BYTES
from gridpilot.states import JobStatus


def collections_for(text: str, client: CentralClient) -> Dict[str, str]:
    """The text of each collection the JDL's InputDataCollection names, by its name there ({} without Split).
    UsageError for one that cannot be read: nothing has been sent yet."""
    try:
        job = parse_job(text)
    except JdlError:
        return {}  # the submission's own check says what is wrong, with the file's name
    if job.document.get("Split") is None:
        return {}
    out: Dict[str, str] = {}
    for entry in job.input_data_collection:
        out[entry.path] = _download(client, entry.path) if entry.catalogue else _local(entry.path)
    return out


def _local(path: str) -> str:
    p = Path(path[len("file:"):] if path.startswith("file:") else path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise UsageError(f"collection {path}: over {MAX_BYTES >> 20} MB")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"collection {path}: no such local file (write LF:{path} for a catalogue entry)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"collection {path}: cannot read: {e}") from None


def _download(client: CentralClient, lfn: str) -> str:
    """The collection at `lfn`, fetched from the first replica that verifies."""
    from gridpilot.storage.checksum import Digest
    from gridpilot.storage.registry import build_registry

    entry = client.lookup_file(lfn)
    if int(entry["size"]) > MAX_BYTES:
        raise UsageError(f"collection LF:{lfn}: over {MAX_BYTES >> 20} MB")
    try:
        registry = build_registry([{"name": e["name"], "url": e["url"]} for e in client.storage_elements()],
                                  "central's storage elements")
    except ConfigError as e:
        raise UsageError(f"collection LF:{lfn}: {e}") from None
    expected = Digest(int(entry["size"]), entry.get("adler32"), entry.get("md5"))
    problems: List[str] = []
    with tempfile.TemporaryDirectory(prefix="gridpilot-collection-") as tmp:
        local = Path(tmp) / "collection"
        for rep in entry["replicas"]:
            try:
                registry.get(rep["se"]).get(rep["pfn"], local, expected=expected, overwrite=True)
                return local.read_text(encoding="utf-8")
            except (ConfigError, StorageError, OSError, UnicodeDecodeError) as e:
                problems.append(f"{rep['se']}: {e}")
    raise UsageError(f"collection LF:{lfn}: no replica could be read ({'; '.join(problems) or 'it has none'})")


def _order(states: Dict[str, Any]) -> List[str]:
    """Unfinished states first, then DONE, then the failures: the order `masterjob` prints them in."""
    def rank(name: str) -> tuple:
        s = JobStatus[name]
        return (2 if s.is_error else 1 if s.is_final else 0, name)

    return sorted(states, key=rank)


def cmd_masterjob(args: argparse.Namespace) -> int:
    """A masterjob's subjobs by state: counts, and with -v their ids. Exit OK whatever the subjobs' states (it shows;
    `gridpilot submit --wait` is what waits)."""
    res = client_for(args).masterjob(args.id, ids=args.verbose)
    if args.json:
        _print_json(res)
        return cli_codes.OK
    print(f"masterjob {res['id']}" + (f" ({res['name']})" if res.get("name") else "")
          + f": {res['state']}, split {res['split'] or '?'} into {res['subjobs']} subjobs")
    for name in _order(res["states"]):
        line = f"  {name:<10} {res['states'][name]:>6}"
        ids = (res.get("ids") or {}).get(name)
        if ids:
            line += "  " + " ".join(str(i) for i in ids)
        print(line)
    return cli_codes.OK


def kill_line(r: Dict[str, Any]) -> str:
    """What `gridpilot kill MASTERID` prints: how many subjobs ended, how many were told to stop."""
    return (f"masterjob {r['id']}: {r['killed']} subjob(s) KILLED, {r['requested']} told to stop (the pilots stop "
            f"them within seconds); now {r['state']}")


def resubmit_line(r: Dict[str, Any]) -> str:
    refused = [s for s in r["subjobs"] if "error" in s]
    line = f"masterjob {r['id']}: {r['resubmitted']} subjob(s) in error back to WAITING"
    if refused:
        line += f"; {len(refused)} refused: " + "; ".join(f"{s['id']}: {s['error']['message']}" for s in refused[:5])
    return line


def print_kill_refusals(r: Dict[str, Any]) -> None:
    for s in r.get("subjobs", []):
        if "error" in s:
            print(f"subjob {s['id']}: {s['error']['message']}", file=sys.stderr)


__all__ = ["cmd_masterjob", "collections_for", "kill_line", "print_kill_refusals", "resubmit_line"]
