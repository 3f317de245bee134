"""Every bound on what central takes from outside, in one place: the numbers, and the checks that apply them.

A value out of its bound is the caller's mistake, answered 400 with an error that names the field (`field` in the
error body, and the message says it), before anything reaches the database. Without these, the database found
the mistake: an id past BIGINT, a NUL that PostgreSQL refuses in text, a TTL past INTEGER, 100,000 user names past
PostgreSQL's 65,535 bind parameters, JSON deeper than orjson writes. That was a 500, and often only on one of the
two databases. docs/central-api.md ("Bounds") shows the same numbers as a table; tests/test_central_bounds.py
sends a bad value for every field on SQLite and PostgreSQL.

Field names in errors: a body field by its key (`size`), a nested one by its path (`heartbeats[3].sample`,
`pilots.queued`), a path or query parameter by its name (`job_id`, `limit`), a JDL value as `jdl.<Key>` (`jdl.TTL`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import orjson

from gridpilot.central import schema, tokens
from gridpilot.pilotversion import MAX_VERSION_CHARS
from gridpilot.central.problems import ApiError, bad_request

# -- numbers --

#: Ids (jobs) are BIGINT: 1 to 2^63-1.
MAX_ID = (1 << 63) - 1
#: Counters stored as INTEGER (resubmission, pilot counts' column type): at most 2^31-1.
MAX_INT4 = (1 << 31) - 1
#: A file's size in bytes is a BIGINT.
MAX_FILE_SIZE = MAX_ID
#: Names stored as VARCHAR(255): users, token subjects, sites, CEs, nodes, job names, storage element names.
MAX_NAME = 255
#: A JDL text, in characters. Real JDLs are a few kB; long InputData lists reach a few hundred.
MAX_JDL = 1 << 20
#: A bearer token given in a body (revoke). A JWT of ours is a few hundred bytes.
MAX_TOKEN = 8 << 10
#: A heartbeat sample or a status report's resources: JSON object nesting and size once encoded. The pilot's are
#: under 1 kB plus ~250 bytes per GPU; orjson writes at most 254 levels, so a deeper object could be read and never
#: written back.
MAX_SAMPLE_DEPTH = 32
MAX_SAMPLE_BYTES = 64 << 10
#: A text inside a sample or resources that central knows (io_source, a GPU's pci_address, vendor, source, error).
MAX_SAMPLE_TEXT = 1024
#: Byte counters in a sample (I/O, network, GPU memory) and process/thread counts: BIGINT's range, as sizes.
MAX_COUNTER = MAX_ID
#: A site map: its keys, each list in it (users, nousers, partition, close_se, and list values of extra keys),
#: and each string. Lists go into the broker's SQL as bind parameters (users, nousers); with these bounds a
#: match binds at most about 2,300 of PostgreSQL's 65,535.
MAX_SITE_KEYS = 256
MAX_SITE_LIST = 1000
MAX_SITE_TEXT = 1024
#: GPUs a site map may list, and so the most a job may ask for (more could never match).
MAX_GPUS = 256
#: A site map's cpu_features: items, and characters of each (an aarch64 node lists some 40, a riscv64 one its ISA
#: string and extensions).
MAX_CPU_FEATURES = 256
MAX_CPU_FEATURE_CHARS = 64
#: A pilot version (site map pilot_version, JDL MinPilotVersion, --min-pilot-version): pilotversion.py's bound.
MAX_VERSION = MAX_VERSION_CHARS
#: A job's TTL: its job token lives TTL + JOB_TOKEN_MARGIN_S and a token lives at most MAX_TTL_S, so a longer TTL
#: would be accepted at submit and then fail every match that offered it (399 days: 34,473,600 s).
MAX_JOB_TTL_S = int(tokens.MAX_TTL_S - tokens.JOB_TOKEN_MARGIN_S)
#: MemorySize and WorkDirectorySize, in bytes (1 PiB): stored in MB as BIGINT, far from its end.
MAX_JOB_BYTES = 1 << 50
#: A catalogue path (LFN, directory, a job's OutputDir): files.lfn is VARCHAR(1024).
MAX_LFN = 1024
#: A replica's physical URL and a storage element's URL.
MAX_URL = 4096
#: Reports in one POST /reports (bulkreports.py): what a tower learned since its last report.
MAX_REPORTS = 1000
#: An ARC job id and the URL of a published pilot log, in a report: jobs.arc_job_id is VARCHAR(256), pilot_log_url
#: VARCHAR(2048) (schema step 16). A-REX's ids are some 50 characters.
MAX_ARC_JOB_ID = schema.ARC_JOB_ID_LENGTH
MAX_PILOT_LOG_URL = schema.PILOT_LOG_URL_LENGTH


# -- the error --


def bad_field(field: str, message: str, code: str = "bad_request", **extra: Any) -> ApiError:
    """400 naming the field: `field` in the error body; the message should say it too."""
    return bad_request(message, code, field=field, **extra)


# -- checks: each returns the value (converted where said) or raises bad_field --


def whole(value: Any, field: str, lo: int, hi: int, *, what: Optional[str] = None) -> int:
    """A JSON whole number in [lo, hi] (not a bool; orjson gives a float for one past 64 bits)."""
    name = what or field
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_field(field, f"{name} must be a whole number from {lo} to {hi}, got {_shown(value)}")
    if not lo <= value <= hi:
        raise bad_field(field, f"{name} must be a whole number from {lo} to {hi}, got {_shown(value)}")
    return value


def number(value: Any, field: str, lo: float = -math.inf, hi: float = math.inf, *, what: Optional[str] = None) -> float:
    """A finite JSON number in [lo, hi], as a float."""
    name = what or field
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_field(field, f"{name} must be a number, got {_shown(value)}")
    if not lo <= value <= hi:
        raise bad_field(field, f"{name} must be a number from {lo:g} to {hi:g}, got {_shown(value)}")
    return float(value)


def text(value: Any, field: str, longest: int, *, empty: bool = False, what: Optional[str] = None) -> str:
    """A string of at most `longest` characters without NUL (PostgreSQL refuses NUL in text); non-empty unless
    `empty`."""
    name = what or field
    if not isinstance(value, str) or (not value and not empty):
        kind = "a string" if empty else "a non-empty string"
        raise bad_field(field, f"{name} must be {kind} of at most {longest} characters, got {_shown(value)}")
    if len(value) > longest:
        raise bad_field(field, f"{name} must be at most {longest} characters, got {len(value)}")
    if "\0" in value:
        raise bad_field(field, f"{name} must not contain a NUL character (at offset {value.index(chr(0))})")
    return value


def optional_text(value: Any, field: str, longest: int, *, what: Optional[str] = None) -> Optional[str]:
    return None if value is None else text(value, field, longest, what=what)


def path_id(raw: str, field: str) -> int:
    """A job id from a path (the route took digits only): 1 to MAX_ID."""
    if len(raw) > len(str(MAX_ID)) or not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        shown = raw if len(raw) <= 24 else f"{raw[:12]}... ({len(raw)} digits)"
        raise bad_field(field, f"{field} in the path must be a whole number from 1 to {MAX_ID}, got {shown}")
    return int(raw)


def query_text(query: Mapping[str, str], name: str, longest: int = MAX_NAME) -> Optional[str]:
    """A query parameter's text (None when absent or empty)."""
    raw = query.get(name)
    if not raw:
        return None
    return text(raw, name, longest, what=f"query parameter {name}")


def json_object(value: Any, field: str) -> Dict[str, Any]:
    """A JSON object to store as it is (a sample, resources): at most MAX_SAMPLE_DEPTH deep, no NUL in any key
    or string, at most MAX_SAMPLE_BYTES once encoded."""
    if not isinstance(value, dict):
        raise bad_field(field, f"{field} must be a JSON object, got {_kind(value)}")
    # Iterative, so a deep value cannot exhaust the stack here either.
    stack: List[Tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_SAMPLE_DEPTH:
            raise bad_field(field, f"{field} is nested more than {MAX_SAMPLE_DEPTH} levels deep")
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, item in items:
            if isinstance(k, str) and "\0" in k:
                raise bad_field(field, f"{field} has a key with a NUL character")
            if isinstance(item, str):
                if "\0" in item:
                    raise bad_field(field, f"{field} has a string with a NUL character")
            elif isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
    size = len(orjson.dumps(value))
    if size > MAX_SAMPLE_BYTES:
        raise bad_field(field, f"{field} is {size} bytes as JSON, at most {MAX_SAMPLE_BYTES}")
    return value


#: The fields of a heartbeat sample (and of a status report's resources) central knows, with what each must be.
#: Others pass with the object's own bounds (json_object): the pilot adds fields before central knows them.
_SAMPLE_COUNTERS = ("nprocs", "nthreads", "read_bytes", "write_bytes", "rchar_bytes", "wchar_bytes", "net_rx_bytes",
                    "net_tx_bytes")
_GPU_COUNTERS = ("memory_used_bytes", "memory_total_bytes", "job_memory_bytes", "job_processes")
_GPU_TEXTS = ("pci_address", "vendor", "source", "error")


def sample_fields(value: Dict[str, Any], field: str) -> Dict[str, Any]:
    """The known fields of a sample or resources object (json_object first): counters whole numbers from 0 to
    MAX_COUNTER, io_source a text, gpus a list of at most MAX_GPUS objects (util_percent 0 to 100, memory counters,
    texts). null is taken as absent. docs/monitoring.md describes the fields."""
    for k in _SAMPLE_COUNTERS:
        if value.get(k) is not None:
            whole(value[k], f"{field}.{k}", 0, MAX_COUNTER)
    if value.get("io_source") is not None:
        text(value["io_source"], f"{field}.io_source", MAX_SAMPLE_TEXT)
    gpus = value.get("gpus")
    if gpus is None:
        return value
    if not isinstance(gpus, list):
        raise bad_field(f"{field}.gpus", f"{field}.gpus must be a list of objects, got {_kind(gpus)}")
    if len(gpus) > MAX_GPUS:
        raise bad_field(f"{field}.gpus", f"{field}.gpus has {len(gpus)} items, at most {MAX_GPUS}")
    for i, g in enumerate(gpus):
        at = f"{field}.gpus[{i}]"
        if not isinstance(g, dict):
            raise bad_field(at, f"{at} must be an object, got {_kind(g)}")
        text(g.get("pci_address"), f"{at}.pci_address", MAX_SAMPLE_TEXT)
        for k in _GPU_TEXTS[1:]:
            if g.get(k) is not None:
                text(g[k], f"{at}.{k}", MAX_SAMPLE_TEXT)
        if g.get("util_percent") is not None:
            number(g["util_percent"], f"{at}.util_percent", 0, 100)
        for k in _GPU_COUNTERS:
            if g.get(k) is not None:
                whole(g[k], f"{at}.{k}", 0, MAX_COUNTER)
    return value


def no_nul_in_jdl(jdl: str) -> None:
    """A NUL anywhere in a JDL would reach the stored text (and any string value taken from it)."""
    i = jdl.find("\0")
    if i >= 0:
        line = jdl.count("\n", 0, i) + 1
        column = i - (jdl.rfind("\n", 0, i) + 1) + 1
        raise bad_field("jdl", f"the JDL has a NUL character at line {line}, column {column}", "invalid_jdl",
                        line=line, column=column, path=None)


def jdl_value(doc: Any, key: str, message: str) -> ApiError:
    """400 for a JDL value out of its bound, pointing at it in the text (as a JdlError answer does)."""
    v = doc.get(key)
    line, column = (getattr(v, "line", 0) or None, getattr(v, "column", 0) or None)
    return bad_field(f"jdl.{key}", f"{key} {message}", "invalid_jdl", line=line, column=column, path=None)


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number")


def _shown(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


__all__ = [
    "MAX_ARC_JOB_ID", "MAX_COUNTER", "MAX_FILE_SIZE", "MAX_GPUS", "MAX_ID", "MAX_INT4", "MAX_JDL", "MAX_JOB_BYTES",
    "MAX_JOB_TTL_S", "MAX_LFN", "MAX_NAME", "MAX_PILOT_LOG_URL", "MAX_REPORTS", "MAX_SAMPLE_BYTES", "MAX_SAMPLE_DEPTH",
    "MAX_SAMPLE_TEXT", "MAX_SITE_KEYS",
    "MAX_SITE_LIST", "MAX_SITE_TEXT",
    "MAX_CPU_FEATURES", "MAX_CPU_FEATURE_CHARS", "MAX_VERSION",
    "MAX_TOKEN", "MAX_URL", "bad_field", "json_object", "jdl_value", "no_nul_in_jdl", "number", "optional_text",
    "path_id", "query_text", "sample_fields", "text", "whole",
]
