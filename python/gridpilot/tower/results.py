"""What comes back from the node: result.json checked field by field (the offline runner's interface, as the
agreed contract says it), and the outputs it lists uploaded to storage and verified ON the storage element against
it before anything is registered.

Checking: result.json is the word of a process on a node the tower does not control, read after a transfer the tower
does not control either, so every field is checked (type, bounds, names of states and kill reasons, output names
inside the session, LFNs absolute, checksums in their form, trace keys unique) and the first bad one is a
ResultError naming it ("outputs[2].adler32"), never a crash. A result that fails the check ends the job ERROR_E
with the reason in its trace; nothing of it is registered.

Publishing one output (publish_outputs), in this order, each step a reason to stop:
1. the downloaded copy on the tower's disk has the size and adler32 (and md5, when given) result.json lists: a
   copy damaged between the node and here is never uploaded;
2. put() to the first storage element of the job's list that takes it (it verifies the element against the bytes
   sent, and removes a copy that differs);
3. the element is asked again for the copy's size and adler32 and these are compared with result.json's (not with
   what was sent): what gets registered is what the node produced; a mismatch removes the copy;
4. only then is the replica registered, with the job's own token; a refused registration removes the copy.
An output that no element took ends the job ERROR_SV, like the pilot's stage-out (and the others stay registered,
as a pilot's do). One replica per output: the offline runner has no JDL replica count to honour beyond that yet.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import orjson

from gridpilot.errors import GridpilotError, StorageError
from gridpilot.states import JobStatus, KillReason
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import Digest, digest_file
from gridpilot.storage.placement import new_pfn
from gridpilot.storage.registry import Registry

#: result.json, at most: its trace holds every line and `[proc]` record of one job.
MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_STATES = 1000
MAX_TRACE = 200_000
MAX_OUTPUTS = 10_000
MAX_TEXT = 64 * 1024
MAX_KEY = 256
MAX_LFN = 4096
_ADLER = re.compile(r"^[0-9a-f]{8}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class ResultError(GridpilotError):
    """result.json is not what the offline runner's interface says; `field` names where."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"result.json {field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class StateRecord:
    state: str
    at: float
    kill_reason: Optional[str] = None
    exit_code: Optional[int] = None
    message: Optional[str] = None


@dataclass(frozen=True)
class OutputRecord:
    name: str
    lfn: str
    size: int
    adler32: str
    md5: Optional[str]

    @property
    def digest(self) -> Digest:
        return Digest(size=self.size, adler32=self.adler32, md5=self.md5)


@dataclass(frozen=True)
class Result:
    job_id: int
    resubmission: int
    host: str
    started_at: float
    ended_at: float
    states: Tuple[StateRecord, ...]
    trace: Tuple[Dict[str, Any], ...]
    outputs: Tuple[OutputRecord, ...]
    final_state: str
    final_kill_reason: Optional[str]
    final_exit_code: Optional[int]


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ResultError(where, f"must be an object, got {type(value).__name__}")
    return value


def _int(d: Mapping[str, Any], key: str, where: str, *, optional: bool = False, minimum: int = 0) -> Optional[int]:
    v = d.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ResultError(f"{where}{key}", f"must be an integer, got {v!r}"[:200])
    if v < minimum:
        raise ResultError(f"{where}{key}", f"must be >= {minimum}, got {v}")
    return v


def _num(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
        raise ResultError(f"{where}{key}", f"must be a non-negative number, got {v!r}"[:200])
    return float(v)


def _str(d: Mapping[str, Any], key: str, where: str, *, optional: bool = False, limit: int = MAX_TEXT,
         empty: bool = True) -> Optional[str]:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ResultError(f"{where}{key}", f"must be a string, got {v!r}"[:200])
    if len(v) > limit:
        raise ResultError(f"{where}{key}", f"is {len(v)} characters, at most {limit}")
    if not empty and not v:
        raise ResultError(f"{where}{key}", "must not be empty")
    return v


def _state(d: Mapping[str, Any], key: str, where: str) -> str:
    v = _str(d, key, where, limit=32)
    if v not in JobStatus.__members__:
        raise ResultError(f"{where}{key}", f"{v!r} is not a job state")
    return str(v)


def _kill(d: Mapping[str, Any], key: str, where: str) -> Optional[str]:
    v = _str(d, key, where, optional=True, limit=32)
    if v is not None and v not in KillReason.__members__:
        raise ResultError(f"{where}{key}", f"{v!r} is not a kill reason")
    return v


def _list(d: Mapping[str, Any], key: str, limit: int) -> List[Any]:
    v = d.get(key)
    if not isinstance(v, list):
        raise ResultError(key, f"must be a list, got {type(v).__name__}")
    if len(v) > limit:
        raise ResultError(key, f"has {len(v)} entries, at most {limit}")
    return v


def output_name_ok(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and not any(p in ("", ".", "..") for p in parts)


def parse_result(data: bytes, *, job_id: int, resubmission: int) -> Result:
    """The checked content of result.json for this run of the job; ResultError names the first bad field."""
    if len(data) > MAX_RESULT_BYTES:
        raise ResultError("(file)", f"is {len(data)} bytes, at most {MAX_RESULT_BYTES}")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ResultError("(file)", f"is not JSON: {e}") from None
    top = _obj(doc, "(file)")
    if top.get("format") != 1:
        raise ResultError("format", f"must be 1, got {top.get('format')!r}"[:200])
    if _int(top, "job_id", "") != job_id:
        raise ResultError("job_id", f"is {top.get('job_id')}, this is job {job_id}")
    if _int(top, "resubmission", "") != resubmission:
        raise ResultError("resubmission", f"is {top.get('resubmission')}, this run of the job is {resubmission}")
    host = _str(top, "host", "", limit=255) or ""
    started, ended = _num(top, "started_at", ""), _num(top, "ended_at", "")
    states = []
    for i, raw in enumerate(_list(top, "states", MAX_STATES)):
        w = f"states[{i}]."
        s = _obj(raw, w[:-1])
        states.append(StateRecord(state=_state(s, "state", w), at=_num(s, "at", w), kill_reason=_kill(s, "kill_reason", w),
                                  exit_code=_int(s, "exit_code", w, optional=True, minimum=-(2 ** 31)),
                                  message=_str(s, "message", w, optional=True)))
    trace: List[Dict[str, Any]] = []
    keys: Dict[str, int] = {}
    for i, raw in enumerate(_list(top, "trace", MAX_TRACE)):
        w = f"trace[{i}]."
        t = _obj(raw, w[:-1])
        key = str(_str(t, "key", w, limit=MAX_KEY, empty=False))
        if key in keys:
            raise ResultError(f"{w}key", f"{key!r} is also trace[{keys[key]}]'s: keys must be unique")
        keys[key] = i
        trace.append({"ts": _num(t, "ts", w), "category": _str(t, "category", w, limit=64, empty=False),
                      "text": _str(t, "text", w), "key": key})
    outputs = []
    names: Dict[str, int] = {}
    for i, raw in enumerate(_list(top, "outputs", MAX_OUTPUTS)):
        w = f"outputs[{i}]."
        o = _obj(raw, w[:-1])
        name = str(_str(o, "name", w, limit=1024))
        if not output_name_ok(name):
            raise ResultError(f"{w}name", f"{name!r} is not a relative path inside the job's directory")
        if name in names:
            raise ResultError(f"{w}name", f"{name!r} is also outputs[{names[name]}]'s")
        names[name] = i
        lfn = str(_str(o, "lfn", w, limit=MAX_LFN))
        if not lfn.startswith("/") or "/../" in lfn + "/" or lfn.endswith("/"):
            raise ResultError(f"{w}lfn", f"{lfn!r} must be an absolute logical file name")
        adler = str(_str(o, "adler32", w, limit=8))
        if not _ADLER.match(adler):
            raise ResultError(f"{w}adler32", f"{adler!r} must be 8 lowercase hex digits")
        md5 = _str(o, "md5", w, optional=True, limit=32)
        if md5 is not None and not _MD5.match(md5):
            raise ResultError(f"{w}md5", f"{md5!r} must be 32 lowercase hex digits or null")
        outputs.append(OutputRecord(name=name, lfn=lfn, size=int(_int(o, "size", w) or 0), adler32=adler, md5=md5))
    final = _obj(top.get("final"), "final")
    final_state = _state(final, "state", "final.")
    if final_state == "SAVING" and (not states or states[-1].state != "SAVING"):
        raise ResultError("final.state", "is SAVING but the last of states is not")
    return Result(job_id=job_id, resubmission=resubmission, host=host, started_at=started, ended_at=ended,
                  states=tuple(states), trace=tuple(trace), outputs=tuple(outputs), final_state=final_state,
                  final_kill_reason=_kill(final, "kill_reason", "final."),
                  final_exit_code=_int(final, "exit_code", "final.", optional=True, minimum=-(2 ** 31)))


# ---- publishing ------------------------------------------------------------------------------------------------


@dataclass
class Published:
    """What publish_outputs did: registered (lfn, se, pfn); the outputs that failed and why; trace lines."""

    registered: List[Tuple[str, str, str]] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    trace: List[str] = field(default_factory=list)

    @property
    def state(self) -> JobStatus:
        return JobStatus.ERROR_SV if self.failed else JobStatus.DONE


#: Registers one verified replica: (lfn, size, adler32, md5, se name, pfn); raises when refused.
Register = Callable[[str, int, str, Optional[str], str, str], None]


def publish_outputs(outputs: Sequence[OutputRecord], job_dir: Path, registry: Registry, se_order: Sequence[str],
                    register: Register, *, transient: Tuple[Type[BaseException], ...] = ()) -> Published:
    """Upload, verify on the element against result.json, register: see the module's doc. A registration failing
    with one of `transient` (central away) removes the copy and raises it: the whole publication is tried again
    later, rather than the output counted as lost."""
    out = Published()
    ses = [se for se in (registry.find(n) for n in se_order) if se is not None]
    for rec in outputs:
        out.trace.append(f"Uploading: {os.path.basename(rec.lfn)} to {os.path.dirname(rec.lfn)}")
        why = _publish_one(rec, job_dir, ses, register, out, transient)
        if why is not None:
            out.failed.append((rec.lfn, why))
            out.trace.append(f"stage-out {rec.lfn}: not registered: {why}")
    if not ses and outputs:
        out.trace.append("stage-out: no storage element to write to (site output_ses and central's close ones)")
    out.trace.append(f"stage-out: {len(out.registered)} of {len(outputs)} output(s) verified on storage and "
                     f"registered ({out.state.name})")
    return out


def _publish_one(rec: OutputRecord, job_dir: Path, ses: Sequence[StorageElement], register: Register,
                 out: Published, transient: Tuple[Type[BaseException], ...]) -> Optional[str]:
    local = job_dir / rec.name
    try:
        here = digest_file(local, md5=rec.md5 is not None)
    except OSError as e:
        return f"not downloaded from the ARC CE: {e.strerror or e}"
    bad = here.mismatches(rec.digest)
    if bad:
        return f"the copy downloaded from the ARC CE differs from result.json: {'; '.join(bad)}"
    errors = []
    for se in ses:
        pfn = new_pfn(se)
        t0 = time.monotonic()
        try:
            se.put(local, pfn)
            # The element's own size and adler32, against the node's word (result.json), not against the bytes sent.
            found = se.verify(pfn, Digest(size=rec.size, adler32=rec.adler32))
        except StorageError as e:
            errors.append(f"{se.name}: {e}")
            out.trace.append(f"stage-out {rec.lfn}: {se.name} {pfn} failed: {e}")
            continue
        try:
            register(rec.lfn, rec.size, rec.adler32, rec.md5, se.name, pfn)
        except transient:
            _remove(se, pfn)
            raise
        except Exception as e:  # noqa: BLE001 - whatever refused it, the copy is not registered: remove it
            note = _remove(se, pfn)
            errors.append(f"{se.name}: registration refused: {e} ({note})")
            out.trace.append(f"Registering: {rec.lfn}. Return status: false")
            out.trace.append(f"stage-out {rec.lfn}: {se.name} {pfn}: registration refused: {e} ({note})")
            continue
        out.trace.append(f"Registering: {rec.lfn}. Return status: true")
        out.trace.append(f"stage-out {rec.lfn}: {se.name} {pfn} verified on the storage element against "
                         f"result.json ({found}) in {time.monotonic() - t0:.2f} s, registered")
        out.registered.append((rec.lfn, se.name, pfn))
        return None
    return "; ".join(errors) or "no storage element to write to"


def _remove(se: StorageElement, pfn: str) -> str:
    try:
        se.delete(pfn)
        return "copy removed"
    except StorageError as e:
        return f"copy NOT removed: {e}"


__all__ = ["MAX_RESULT_BYTES", "OutputRecord", "Published", "Result", "ResultError", "StateRecord",
           "output_name_ok", "parse_result", "publish_outputs"]
