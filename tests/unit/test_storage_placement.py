"""The pure rules of staging: replica order, where to write, spec parsing, outcomes, archive compression."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from gridpilot.errors import ConfigError
from gridpilot.storage.archive import compression_for, select_members
from gridpilot.storage.catalogue_protocol import Replica
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.placement import candidate_ses, new_pfn, order_replicas
from gridpilot.storage.transfers import InputSpec, OutputFileResult, StageOutcome, StageOutResult


def test_replicas_close_first_in_the_order_given_then_the_rest_in_catalogue_order():
    a, b, c, d = (Replica(se, f"root://h/{se}") for se in ("SITE::A::DISK", "SITE::B::DISK", "SITE::C::DISK", "X::D"))
    close = ["site::c::disk", "SITE::A::DISK"]  # closest first; case does not matter
    assert order_replicas([a, b, c, d, a], close) == [c, a, b, d]
    assert order_replicas([b, d], []) == [b, d]


def test_write_candidates_named_first_then_close_each_once():
    assert candidate_ses(["B", "A"], ["a", "C", "b", "D"]) == ["B", "A", "C", "D"]
    assert candidate_ses([], ["C", "c"]) == ["C"]


def test_new_pfns_are_fresh_and_under_the_prefix(tmp_path):
    se = LocalStorageElement("T::L::DISK", f"file://{tmp_path}/se/")
    p1, p2 = new_pfn(se), new_pfn(se)
    assert p1 != p2 and se.owns(p1) and se.owns(p2)
    assert new_pfn(se, "abcdef-01") == f"file://{tmp_path}/se/ab/abcdef-01"


def test_input_spec_from_jdl_text():
    assert InputSpec.parse("LF:/alice/data/f.root") == InputSpec("/alice/data/f.root")
    assert InputSpec.parse(" LF:/alice/data/f.root,nodownload ") == InputSpec("/alice/data/f.root", nodownload=True)
    with pytest.raises(ConfigError, match="unknown option"):
        InputSpec.parse("LF:/alice/f,sometimes")
    with pytest.raises(ConfigError, match="absolute"):
        InputSpec.parse("LF:relative/f")


def _file(wanted: int, got: int) -> OutputFileResult:
    return OutputFileResult("/l", Path("f"), wanted, replicas=[Replica(f"SE{i}", f"file:///{i}") for i in range(got)])


@pytest.mark.parametrize(
    ("files", "outcome", "status"),
    [
        ([], StageOutcome.COMPLETE, "DONE"),
        ([(2, 2), (1, 1)], StageOutcome.COMPLETE, "DONE"),
        ([(2, 1), (1, 1)], StageOutcome.PARTIAL, "DONE_WARN"),
        # One output lost entirely fails the job, however well the others went (as the ALICE JobWrapper does).
        ([(2, 2), (1, 0)], StageOutcome.FAILED, "ERROR_SV"),
        ([(2, 0)], StageOutcome.FAILED, "ERROR_SV"),
    ],
)
def test_stage_out_outcome(files, outcome, status):
    result = StageOutResult(files=[_file(w, g) for w, g in files])
    assert result.outcome is outcome
    assert result.outcome.job_status == status


def test_archives_of_root_files_are_stored_others_deflated():
    assert compression_for(["a.root", "log.txt"]) == zipfile.ZIP_STORED
    assert compression_for(["log.txt", "x.rootx"]) == zipfile.ZIP_DEFLATED


def test_member_selection_splits_empty_files_and_honours_exclusions(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, content in [
        ("a.root", b"x"),
        ("b.root", b""),
        ("input.root", b"x"),
        ("sub/c.root", b"y"),
        ("l.txt", b"z"),
    ]:
        (tmp_path / name).write_bytes(content)
    full, empty = select_members(tmp_path, ["*.root", "**/c.root"], exclude=["input.root"])
    assert full == ["a.root", "sub/c.root"]
    assert empty == ["b.root"]
    with pytest.raises(ConfigError):
        select_members(tmp_path, ["../*"])
