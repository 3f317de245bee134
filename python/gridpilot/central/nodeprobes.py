"""Node probes at central: each worker node's `gridpilot node check`, as its pilot posts it (issue 20, section 2).

A JobRunner probes its node at start (pilot/nodeprobe.py) and posts the probe here, POST /nodes/probe, once per boot
and again when it changed (pilot/probepost.py). Central keeps the latest probe of each host (`node_probes`) and a
history row only when the probe's digest changed (`node_probe_history`, at most MAX_HISTORY per host): what changed
is probedigest.py's business, shared with the pilot so both agree. The fields `GET /nodes` filters on (arch, GPU
model) and /metrics counts (arch, runtimes that start a container, GPU models) are read out of the probe when it is
stored, so listing and scraping never parse JSON.

Bounds: the probe is a JSON object of at most MAX_BYTES encoded, MAX_DEPTH deep, MAX_KEYS keys per object, MAX_LIST
items per list, MAX_TEXT characters per string and MAX_KEY per key, no NUL; the fields central reads have their
types and their own bounds (`_read_fields`). Anything else is a 400 naming the field (a dotted path such as
`gpus.gpus[2].model`), and nothing is stored.

Authorization: an agent token posts for its own node: the host is the body's `host` (the pilot's node, as in its site
map; an agent token binds a site, not a host) and the site is the token's; a ce token for a host of its site; an
admin names the host and the site. A host central knows at another site is refused (403) to an agent or a ce token:
a site never rewrites another's node. Only an admin reads a host's history (GET /nodes/{host}/probes).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from gridpilot import probedigest
from gridpilot.central import auth, bounds, nodes, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import forbidden, not_found

PROBES = schema.node_probes
HISTORY = schema.node_probe_history

#: The whole probe as JSON: a real one is 2-4 KB (docs/node-check.md); 64 KiB leaves room for many GPUs and CVMFS
#: repositories.
MAX_BYTES = 64 << 10
MAX_DEPTH = 8
MAX_KEYS = 256
MAX_LIST = 256
MAX_TEXT = 1024
MAX_KEY = 64
#: A pilot version (PEP 440 text) and a GPU model as stored for filtering.
MAX_VERSION = 64
MAX_MODEL = 255
#: History rows kept per host: a node that changes daily keeps a quarter of a year.
MAX_HISTORY = 100
#: The longest history page.
MAX_HISTORY_PAGE = MAX_HISTORY
_X86_LEVEL = re.compile(r"x86-64-v[1-4]\Z")
_ARCH = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")


def _bad(field: str, message: str) -> Exception:
    return bounds.bad_field(field, f"probe field '{field}' {message}", "bad_probe")


def _check_shape(probe: Any) -> None:
    """The generic bounds of every value, iteratively (a deep value cannot exhaust the stack)."""
    if not isinstance(probe, dict):
        raise bounds.bad_field("probe", "the node probe must be a JSON object", "bad_probe")
    stack: List[Tuple[Any, str, int]] = [(probe, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _bad(where, f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            if len(value) > MAX_KEYS:
                raise _bad(where or "probe", f"has {len(value)} keys, at most {MAX_KEYS}")
            items: Sequence[Tuple[str, Any, str]] = [
                (k, v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
            for k, _, path in items:
                if len(k) > MAX_KEY or "\0" in k or not k:
                    raise _bad(path[:MAX_KEY * 2], f"is not a key: at most {MAX_KEY} characters, no NUL")
        else:
            if len(value) > MAX_LIST:
                raise _bad(where, f"has {len(value)} items, at most {MAX_LIST}")
            items = [(str(i), v, f"{where}[{i}]") for i, v in enumerate(value)]
        for _, item, path in items:
            if isinstance(item, str):
                if len(item) > MAX_TEXT:
                    raise _bad(path, f"is {len(item)} characters, at most {MAX_TEXT}")
                if "\0" in item:
                    raise _bad(path, "has a NUL character")
            elif isinstance(item, (dict, list)):
                stack.append((item, path, depth + 1))
    size = len(orjson.dumps(probe))
    if size > MAX_BYTES:
        raise bounds.bad_field("probe", f"the node probe is {size} bytes as JSON, at most {MAX_BYTES}", "bad_probe")


def _section(probe: Mapping[str, Any], name: str) -> Dict[str, Any]:
    v = probe.get(name)
    if not isinstance(v, dict):
        raise _bad(name, f"must be an object (the probe's {name} section), got {_kind(v)}")
    return v


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number")


def _opt_text(section: Mapping[str, Any], key: str, field: str, longest: int) -> Optional[str]:
    v = section.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > longest:
        raise _bad(field, f"must be a string of at most {longest} characters or null, got {_kind(v)}")
    return v


def _read_fields(probe: Mapping[str, Any]) -> Dict[str, Any]:
    """The columns central keeps beside the probe, each checked: arch, x86-64 level, runtimes that start a
    container, GPU models, ok, pilot version."""
    cpu = _section(probe, "cpu")
    arch = cpu.get("arch")
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise _bad("cpu.arch", f"must be an architecture name (letters, digits, _.-, at most 32), got {_kind(arch)}"
                               f"{f' {arch[:40]!r}' if isinstance(arch, str) else ''}")
    level = cpu.get("x86_64_level")
    if level is not None and (not isinstance(level, str) or not _X86_LEVEL.match(level)):
        raise _bad("cpu.x86_64_level", f"must be x86-64-v1 to x86-64-v4 or null, got {str(level)[:40]!r}")
    for flag in ("avx", "avx2"):
        if cpu.get(flag) is not None and not isinstance(cpu.get(flag), bool):
            raise _bad(f"cpu.{flag}", f"must be true, false or null, got {_kind(cpu.get(flag))}")
    found = _section(probe, "runtimes").get("found")
    if not isinstance(found, dict):
        raise _bad("runtimes.found", f"must be an object of runtimes by name, got {_kind(found)}")
    starting = []
    for name, r in found.items():
        if not isinstance(r, dict):
            raise _bad(f"runtimes.found.{name}", f"must be an object, got {_kind(r)}")
        if r.get("starts") is not None and not isinstance(r.get("starts"), bool):
            raise _bad(f"runtimes.found.{name}.starts", f"must be true, false or null, got {_kind(r.get('starts'))}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
            raise _bad(f"runtimes.found.{name[:40]}", "is not a runtime name (letters, digits, _.-, at most 32)")
        if r.get("starts"):
            starting.append(name)
    gpu_list = _section(probe, "gpus").get("gpus")
    if not isinstance(gpu_list, list):
        raise _bad("gpus.gpus", f"must be a list of GPUs, got {_kind(gpu_list)}")
    if len(gpu_list) > bounds.MAX_GPUS:
        raise _bad("gpus.gpus", f"has {len(gpu_list)} GPUs, at most {bounds.MAX_GPUS}")
    models = []
    for i, g in enumerate(gpu_list):
        if not isinstance(g, dict):
            raise _bad(f"gpus.gpus[{i}]", f"must be an object, got {_kind(g)}")
        for key in ("vendor", "pci_address"):
            _opt_text(g, key, f"gpus.gpus[{i}].{key}", MAX_MODEL)
        model = _opt_text(g, "model", f"gpus.gpus[{i}].model", MAX_MODEL)
        if model is not None and ("\n" in model or "\r" in model):
            raise _bad(f"gpus.gpus[{i}].model", "must be one line")
        models.append(model or "unknown")
    ok = probe.get("ok")
    if not isinstance(ok, bool):
        raise _bad("ok", f"must be true or false (the node can run some job), got {_kind(ok)}")
    version = probe.get("pilot_version")
    if version is not None and (not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9_.+!-]{1,64}", version)):
        raise _bad("pilot_version", f"must be a version (PEP 440 text, at most {MAX_VERSION} characters), got "
                                    f"{str(version)[:40]!r}")
    return {"arch": arch, "x86_64_level": level, "runtimes": " ".join(sorted(starting)), "gpus": "\n".join(models),
            "ok": ok, "pilot_version": version}


def check(body: Any) -> Tuple[str, Optional[str], Dict[str, Any], Dict[str, Any]]:
    """The host, the site an admin names, the probe to store (the body without `host`/`site`) and its columns;
    400 naming the field on anything out of bounds. Pure, tested without a database."""
    _check_shape(body)
    host = bounds.text(body.get("host"), "host", bounds.MAX_NAME, what="field 'host' (the node's host name)")
    site = bounds.optional_text(body.get("site"), "site", bounds.MAX_NAME, what="field 'site'")
    probe = {k: v for k, v in body.items() if k not in ("host", "site")}
    return host, site, probe, _read_fields(probe)


def post(db: Database, p: Principal, body: Any, now: float) -> Dict[str, Any]:
    """POST /nodes/probe: the probe of one node, with top-level `host` (and `pilot_version`; an admin adds `site`).
    Returns {"host", "site", "digest", "changed", "history"}: changed when a history row was written."""
    auth.require_role(p, "agent", "ce", "admin", action="post node probes")
    host, site, probe, fields = check(body)
    if p.role in ("agent", "ce"):
        if site is not None and site != p.claims.site:
            raise forbidden(f"{p.describe()} is bound to site {p.claims.site!r}; it may not post for site {site!r}")
        site = p.claims.site
    elif site is None:
        raise bounds.bad_field("site", "an admin names the node's 'site'")
    ce = p.claims.ce if p.role in ("agent", "ce") else None
    d = probedigest.digest(probe)
    text = orjson.dumps(probe).decode()
    by = p.describe()[:bounds.MAX_NAME]
    with db.write() as conn:
        known = conn.execute(select(schema.nodes.c.site).where(schema.nodes.c.host == host)).first()
        if known is not None and known.site is not None and known.site != site and p.role != "admin":
            raise forbidden(f"{p.describe()} is bound to site {site!r}; node {host!r} is known at site "
                            f"{known.site!r}")
        nodes.ensure(conn, db, host, site, ce, now)
        conn.execute(update(schema.nodes).where(schema.nodes.c.host == host).values(
            last_seen=now, site=site, **({"ce": ce} if ce else {})))
        before = conn.execute(select(PROBES.c.digest).where(PROBES.c.host == host)).scalar()
        changed = before != d
        values = dict(fields, digest=d, posted=now, posted_by=by, probe=text)
        if before is None:
            conn.execute(PROBES.insert().values(host=host, changed=now, **values))
        else:
            conn.execute(update(PROBES).where(PROBES.c.host == host).values(
                **values, **({"changed": now} if changed else {})))
        if changed:
            conn.execute(HISTORY.insert().values(host=host, ts=now, digest=d, posted_by=by, probe=text))
            _trim(conn, host)
        kept = conn.execute(select(func.count()).select_from(HISTORY).where(HISTORY.c.host == host)).scalar()
    return {"host": host, "site": site, "digest": d, "changed": changed, "history": int(kept or 0)}


def _trim(conn: Connection, host: str) -> None:
    """At most MAX_HISTORY rows for the host: the oldest beyond go."""
    cut = conn.execute(select(HISTORY.c.id).where(HISTORY.c.host == host)
                       .order_by(HISTORY.c.ts.desc(), HISTORY.c.id.desc()).offset(MAX_HISTORY).limit(1)).scalar()
    if cut is not None:
        conn.execute(delete(HISTORY).where(HISTORY.c.host == host, HISTORY.c.id <= cut))


def history(db: Database, p: Principal, host: str, query: Mapping[str, str]) -> Dict[str, Any]:
    """GET /nodes/{host}/probes[?limit=N]: (admin) the host's latest probe and its changes, newest first."""
    auth.require_role(p, "admin", action="read node probe history")
    bounds.text(host, "host", bounds.MAX_NAME, what="the host in the path")
    raw = query.get("limit", "")
    limit = MAX_HISTORY_PAGE
    if raw:
        if len(raw) > 8 or not raw.isdigit() or not 1 <= int(raw) <= MAX_HISTORY_PAGE:
            raise bounds.bad_field("limit", f"query parameter limit must be a whole number from 1 to "
                                            f"{MAX_HISTORY_PAGE}")
        limit = int(raw)
    with db.read() as conn:
        node = conn.execute(select(schema.nodes.c.site).where(schema.nodes.c.host == host)).first()
        latest = conn.execute(select(PROBES).where(PROBES.c.host == host)).first()
        rows = conn.execute(select(HISTORY).where(HISTORY.c.host == host)
                            .order_by(HISTORY.c.ts.desc(), HISTORY.c.id.desc()).limit(limit)).all()
    if node is None:
        raise not_found(f"central has not heard of node {host!r}", "node_not_found")
    return {
        "host": host, "site": node.site,
        "latest": None if latest is None else {
            "digest": latest.digest, "posted": latest.posted, "changed": latest.changed,
            "posted_by": latest.posted_by, "probe": orjson.loads(latest.probe)},
        "history": [{"ts": r.ts, "digest": r.digest, "posted_by": r.posted_by, "probe": orjson.loads(r.probe)}
                    for r in rows],
    }


#: /metrics counts the nodes whose last_seen (a probe, a match, a failure) is this recent: a node gone for a day is
#: no longer part of its site.
METRICS_SEEN_S = 86400.0


def counts(db: Database, now: float) -> Dict[str, Dict[Tuple[str, str], int]]:
    """Nodes by (site, arch), by (site, runtime that starts a container) and by (site, GPU model: a node counts once
    per model it has), over the probed nodes seen within METRICS_SEEN_S, for /metrics."""
    with db.read() as conn:
        rows = conn.execute(select(schema.nodes.c.site, PROBES.c.arch, PROBES.c.runtimes, PROBES.c.gpus)
                            .join(PROBES, PROBES.c.host == schema.nodes.c.host)
                            .where(schema.nodes.c.last_seen > now - METRICS_SEEN_S)).all()
    out: Dict[str, Dict[Tuple[str, str], int]] = {"arch": {}, "runtime": {}, "gpu": {}}
    for site, arch, runtimes, gpus in rows:
        s = str(site or "")
        out["arch"][(s, arch or "")] = out["arch"].get((s, arch or ""), 0) + 1
        for name in runtimes.split():
            out["runtime"][(s, name)] = out["runtime"].get((s, name), 0) + 1
        for model in {m for m in gpus.split("\n") if m}:
            out["gpu"][(s, model)] = out["gpu"].get((s, model), 0) + 1
    return out


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_HISTORY", "MAX_KEYS", "MAX_LIST", "MAX_TEXT", "METRICS_SEEN_S", "check",
           "counts", "history", "post"]
