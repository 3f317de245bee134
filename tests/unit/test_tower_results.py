"""result.json from the node is checked field by field (each bad field named), and its outputs are registered only
after the storage element itself confirmed the size and adler32 result.json gives: a copy damaged on the way from
the node, or on the element, is never registered (and the element's bad copy is removed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional

import orjson
import pytest

from gridpilot.states import JobStatus
from gridpilot.storage import LocalStorageElement, Registry
from gridpilot.storage.checksum import digest_file
from gridpilot.tower.results import ResultError, parse_result, publish_outputs

CONTENT = b"the payload's output\n" * 100


def _result(tmp: Path) -> Dict[str, Any]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    (out / "data.txt").write_bytes(CONTENT)
    d = digest_file(out / "data.txt")
    return {"format": 1, "job_id": 5, "resubmission": 0, "host": "wn1", "started_at": 10.0, "ended_at": 20.0,
            "states": [{"state": "STARTED", "at": 11.0}, {"state": "RUNNING", "at": 12.0},
                       {"state": "SAVING", "at": 19.0, "exit_code": 0}],
            "trace": [{"ts": 11.0, "category": "trace", "text": "Job started", "key": "r0:1"},
                      {"ts": 12.0, "category": "proc", "text": "1 | 1 | ...", "key": "r0:2"}],
            "outputs": [{"name": "out/data.txt", "lfn": "/alice/out/data.txt", "size": d.size, "adler32": d.adler32,
                         "md5": d.md5}],
            "final": {"state": "SAVING", "kill_reason": None, "exit_code": 0}}


def test_a_good_result_is_read(tmp_path: Path):
    r = parse_result(orjson.dumps(_result(tmp_path)), job_id=5, resubmission=0)
    assert [s.state for s in r.states] == ["STARTED", "RUNNING", "SAVING"] and r.final_state == "SAVING"
    assert r.outputs[0].lfn == "/alice/out/data.txt" and r.trace[1]["key"] == "r0:2" and r.host == "wn1"


def _set(doc: Dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc[int(p)] if p.isdigit() else doc[p]  # type: ignore[assignment]
    if value is _DELETE:
        del doc[last]  # type: ignore[arg-type]
    else:
        doc[int(last) if last.isdigit() else last] = value  # type: ignore[index]


_DELETE = object()


@pytest.mark.parametrize("path, value, field", [
    ("format", 2, "format"),
    ("job_id", 6, "job_id"),
    ("resubmission", 1, "resubmission"),
    ("states.1.state", "FLYING", "states[1].state"),
    ("states.2.kill_reason", "BORED", "states[2].kill_reason"),
    ("states.0.at", "yesterday", "states[0].at"),
    ("trace.1.key", "r0:1", "trace[1].key"),
    ("trace.0.key", "", "trace[0].key"),
    ("trace.0.text", 5, "trace[0].text"),
    ("outputs.0.name", "../../etc/passwd", "outputs[0].name"),
    ("outputs.0.name", "/etc/passwd", "outputs[0].name"),
    ("outputs.0.lfn", "relative/lfn", "outputs[0].lfn"),
    ("outputs.0.adler32", "XYZ", "outputs[0].adler32"),
    ("outputs.0.md5", "1234", "outputs[0].md5"),
    ("outputs.0.size", -1, "outputs[0].size"),
    ("outputs.0.size", True, "outputs[0].size"),
    ("final.state", "DONE_OR_NOT", "final.state"),
    ("final", _DELETE, "final"),
    ("states", {"not": "a list"}, "states"),
])
def test_each_bad_field_is_named(tmp_path: Path, path: str, value: Any, field: str):
    doc = copy.deepcopy(_result(tmp_path))
    _set(doc, path, value)
    with pytest.raises(ResultError) as e:
        parse_result(orjson.dumps(doc), job_id=5, resubmission=0)
    assert e.value.field == field, str(e.value)


def test_not_json_and_too_big_are_errors(tmp_path: Path):
    with pytest.raises(ResultError, match="not JSON"):
        parse_result(b"{nope", job_id=5, resubmission=0)
    with pytest.raises(ResultError, match="must be an object"):
        parse_result(b"[]", job_id=5, resubmission=0)


class Recorder:
    """Stands in for central's POST /catalogue/files (the integration test registers with central itself)."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: List[tuple] = []
        self.refuse = refuse

    def __call__(self, lfn: str, size: int, adler32: str, md5: Optional[str], se: str, pfn: str) -> None:
        if self.refuse:
            raise RuntimeError("409 job_killed")
        self.calls.append((lfn, size, adler32, md5, se, pfn))


class FlippingSE(LocalStorageElement):
    """A file storage element whose copy changes after the upload checked it (a disk flipping a byte)."""

    def put(self, local, pfn, *, progress=None):  # type: ignore[no-untyped-def]
        digest = super().put(local, pfn, progress=progress)
        path = self.path(pfn)
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        return digest


def _registry(tmp: Path, *ses: LocalStorageElement) -> Registry:
    return Registry(list(ses))


def _se(tmp: Path, name: str, cls: type = LocalStorageElement) -> LocalStorageElement:
    root = tmp / name
    root.mkdir()
    return cls(name, root.as_uri())


def test_an_output_is_registered_after_its_copy_is_verified_on_the_element(tmp_path: Path):
    doc = _result(tmp_path)
    r = parse_result(orjson.dumps(doc), job_id=5, resubmission=0)
    se = _se(tmp_path, "SE1")
    rec = Recorder()
    pub = publish_outputs(r.outputs, tmp_path, _registry(tmp_path, se), ["SE1"], rec)
    assert pub.state is JobStatus.DONE and not pub.failed
    ((lfn, size, adler, md5, se_name, pfn),) = rec.calls
    assert (lfn, size, se_name) == ("/alice/out/data.txt", len(CONTENT), "SE1")
    assert se.path(pfn).read_bytes() == CONTENT and adler == doc["outputs"][0]["adler32"]
    assert "Registering: /alice/out/data.txt. Return status: true" in pub.trace


def test_a_copy_the_element_changed_is_removed_and_the_next_element_used(tmp_path: Path):
    r = parse_result(orjson.dumps(_result(tmp_path)), job_id=5, resubmission=0)
    bad, good = _se(tmp_path, "BAD", FlippingSE), _se(tmp_path, "GOOD")
    rec = Recorder()
    pub = publish_outputs(r.outputs, tmp_path, _registry(tmp_path, bad, good), ["BAD", "GOOD"], rec)
    assert pub.state is JobStatus.DONE
    assert [c[4] for c in rec.calls] == ["GOOD"]
    assert not any(p.is_file() for p in (tmp_path / "BAD").rglob("*")), "the bad copy stayed on BAD"
    assert any("BAD" in line and "adler32" in line and "failed" in line for line in pub.trace), pub.trace


def test_a_download_that_differs_from_result_json_is_never_uploaded(tmp_path: Path):
    doc = _result(tmp_path)
    (tmp_path / "out" / "data.txt").write_bytes(CONTENT[:-1] + b"?")  # damaged on the way from the node
    r = parse_result(orjson.dumps(doc), job_id=5, resubmission=0)
    se = _se(tmp_path, "SE1")
    rec = Recorder()
    pub = publish_outputs(r.outputs, tmp_path, _registry(tmp_path, se), ["SE1"], rec)
    assert pub.state is JobStatus.ERROR_SV and rec.calls == []
    assert "differs from result.json" in pub.failed[0][1]
    assert not any(p.is_file() for p in (tmp_path / "SE1").rglob("*"))


def test_a_refused_registration_removes_the_copy(tmp_path: Path):
    r = parse_result(orjson.dumps(_result(tmp_path)), job_id=5, resubmission=0)
    se = _se(tmp_path, "SE1")
    pub = publish_outputs(r.outputs, tmp_path, _registry(tmp_path, se), ["SE1"], Recorder(refuse=True))
    assert pub.state is JobStatus.ERROR_SV and "copy removed" in pub.failed[0][1]
    assert not any(p.is_file() for p in (tmp_path / "SE1").rglob("*"))


def test_no_element_at_all_fails_the_output(tmp_path: Path):
    r = parse_result(orjson.dumps(_result(tmp_path)), job_id=5, resubmission=0)
    pub = publish_outputs(r.outputs, tmp_path, Registry(), ["NOWHERE"], Recorder())
    assert pub.state is JobStatus.ERROR_SV and pub.failed


class Away(Exception):
    pass


def test_central_away_at_registration_removes_the_copy_and_is_raised(tmp_path: Path):
    r = parse_result(orjson.dumps(_result(tmp_path)), job_id=5, resubmission=0)
    se = _se(tmp_path, "SE1")

    def away(*_: object) -> None:
        raise Away("central unreachable")

    with pytest.raises(Away):
        publish_outputs(r.outputs, tmp_path, _registry(tmp_path, se), ["SE1"], away, transient=(Away,))
    assert not any(p.is_file() for p in (tmp_path / "SE1").rglob("*"))
