"""The splitting rules (jdl/split.py), collections (jdl/collection.py) and a subjob's JDL (central/splitting.py's
subjob_document): by file, by file count and size, by storage element, by directory, production:N-M, and the
#alien...# placeholders."""

from __future__ import annotations

from typing import List

import pytest

from gridpilot.central.splitting import subjob_document, summary_state
from gridpilot.errors import JdlError
from gridpilot.jdl import parse, parse_job, write
from gridpilot.jdl.collection import parse_collection
from gridpilot.jdl.split import InputFile, Piece, SplitSpec, pieces, split_spec, substitute
from gridpilot.states import JobStatus as S


def _spec(body: str) -> SplitSpec:
    spec = split_spec(parse('Executable = "x";\n' + body))
    assert spec is not None
    return spec


def _files(n: int, size: int = 10, ses=("SE1",)) -> List[InputFile]:
    return [InputFile(f"/d/f{i:02d}.root", size, tuple(ses)) for i in range(1, n + 1)]


def _lfns(ps: List[Piece]) -> List[List[str]]:
    return [[f.lfn.rsplit("/", 1)[1] for f in p.files] for p in ps]


# -- the attributes --


@pytest.mark.parametrize("body, message", [
    ('Split = "files"; InputData = "LF:/a";', "Split must be one of file, directory, parentdirectory, se or "
                                             "production:N-M, got 'files'"),
    ('Split = "production:5-2";', "the first number must not exceed the last"),
    ('Split = "production:1-__NJOBS__";', "got 'production:1-__NJOBS__'"),
    ('Split = "file";', "has neither InputData nor InputDataCollection"),
    ('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileNumber = 0;', "SplitMaxInputFileNumber must be at least 1"),
    ('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileNumber = "ten";', "must be a whole number"),
    ('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileSize = "2XB";', "SplitMaxInputFileSize"),
    ('SplitMaxInputFileNumber = 5;', "SplitMaxInputFileNumber is set but Split is not"),
    ('Split = "production:1-2"; OutputDir = "/out/#alien_countr#";', "unknown placeholder #alien_countr#"),
])
def test_bad_split_attributes_are_refused_where_they_are(body: str, message: str) -> None:
    with pytest.raises(JdlError) as info:
        split_spec(parse('Executable = "x";\n' + body))
    assert message in info.value.message
    assert info.value.line == 2


def test_the_attributes_read_as_alice_writes_them() -> None:
    assert split_spec(parse('Executable = "x";')) is None
    # A JDL LPM made for one subjob keeps its placeholders as written, as ALICE does (examples/sim_o2_anchored.jdl).
    assert split_spec(parse('Executable = "x";\nOutputDir = "/o/#alien_counter_03i#"; SplitId = "#x#";')) is None
    assert _spec('split = "production:1-10000";') == SplitSpec("production", 1, 10000)
    spec = _spec('Split = "SE"; InputDataCollection = "LF:/c.xml,nodownload"; SplitMaxInputFileNumber = "50"; '
                 'SplitMaxInputFileSize = "2GB";')
    assert (spec.strategy, spec.max_files, spec.max_bytes) == ("se", 50, 2 << 30)
    assert _spec('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileSize = "1000000";').max_bytes == 1_000_000


# -- the rules --


def test_file_makes_one_subjob_per_file_whatever_the_limits() -> None:
    ps = pieces(_spec('Split = "file"; InputData = "LF:/a"; SplitMaxInputFileNumber = 5;'), _files(4))
    assert _lfns(ps) == [["f01.root"], ["f02.root"], ["f03.root"], ["f04.root"]]
    assert [p.key for p in ps] == ["1", "2", "3", "4"]


def test_the_file_count_limit_cuts_in_order() -> None:
    ps = pieces(_spec('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileNumber = 3;'), _files(7))
    assert [len(p.files) for p in ps] == [3, 3, 1]
    assert _lfns(ps)[2] == ["f07.root"]


def test_the_size_limit_cuts_before_a_file_that_would_exceed_it_and_a_big_file_goes_alone() -> None:
    files = [InputFile("/d/a", 40, ("SE1",)), InputFile("/d/b", 50, ("SE1",)), InputFile("/d/c", 20, ("SE1",)),
             InputFile("/d/huge", 500, ("SE1",)), InputFile("/d/e", 10, ("SE1",))]
    ps = pieces(_spec('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileSize = 100;'), files)
    assert [[f.lfn for f in p.files] for p in ps] == [["/d/a", "/d/b"], ["/d/c"], ["/d/huge"], ["/d/e"]]
    assert all(sum(f.size for f in p.files) <= 100 or len(p.files) == 1 for p in ps)


def test_both_limits_hold_together() -> None:
    ps = pieces(_spec('Split = "se"; InputData = "LF:/a"; SplitMaxInputFileNumber = 2; SplitMaxInputFileSize = 25;'),
                _files(5, size=10))
    assert [len(p.files) for p in ps] == [2, 2, 1]


def test_se_groups_the_files_whose_replicas_are_on_the_same_elements() -> None:
    files = [InputFile("/d/1", 1, ("CERN",)), InputFile("/d/2", 1, ("GSI", "CERN")), InputFile("/d/3", 1, ("CERN",)),
             InputFile("/d/4", 1, ("CERN", "GSI")), InputFile("/d/5", 1, ("KISTI",))]
    ps = pieces(_spec('Split = "se"; InputData = "LF:/a";'), files)
    assert [([f.lfn for f in p.files], p.key) for p in ps] == [
        (["/d/1", "/d/3"], "CERN"), (["/d/2", "/d/4"], "CERN_GSI"), (["/d/5"], "KISTI")]


def test_directory_and_parentdirectory_group_by_path() -> None:
    files = [InputFile(p) for p in ("/r/1/a/x", "/r/1/b/y", "/r/1/a/z", "/r/2/a/w")]
    by_dir = pieces(_spec('Split = "directory"; InputData = "LF:/a";'), files)
    assert [(p.key, [f.lfn for f in p.files]) for p in by_dir] == [
        ("/r/1/a", ["/r/1/a/x", "/r/1/a/z"]), ("/r/1/b", ["/r/1/b/y"]), ("/r/2/a", ["/r/2/a/w"])]
    by_parent = pieces(_spec('Split = "parentdirectory"; InputData = "LF:/a";'), files)
    assert [p.key for p in by_parent] == ["/r/1", "/r/2"]


def test_production_makes_one_subjob_per_number_without_inputs() -> None:
    ps = pieces(_spec('Split = "production:7-10";'), [])
    assert [(p.key, p.files) for p in ps] == [("7", ()), ("8", ()), ("9", ()), ("10", ())]


# -- placeholders --


@pytest.mark.parametrize("text, expected", [
    ("/out/#alien_counter#", "/out/7"),
    ("/out/#alien_counter_03i#", "/out/007"),
    ("/out/#ALIEN_COUNTER_5i#", "/out/    7"),
    ("/out/#alien_counter_i#/x", "/out/7/x"),
    ("/out/#alien_split#/#alien_counter_04i#", "/out/CERN_GSI/0007"),
    ("#alienfilename# #alienlastfilename# #aliendir# #alienfulldir#", "a.root b.root 1 /data/run/1/a.root"),
    ("/out/no/placeholder", "/out/no/placeholder"),
])
def test_placeholders(text: str, expected: str) -> None:
    piece = Piece((InputFile("/data/run/1/a.root"), InputFile("/data/run/2/b.root")), "CERN_GSI")
    assert substitute(text, 7, piece) == expected


def test_a_subjobs_jdl_has_its_share_and_its_placeholders_replaced() -> None:
    doc = parse_job(
        'Executable = "run.sh";\nArguments = "--fast";\nSplit = "se";\nSplitMaxInputFileNumber = 2;\n'
        'InputData = { "LF:/d/a.root,nodownload", "LF:/d/b.root" };\nSplitArguments = "#alienfilename#";\n'
        'OutputDir = "/u/out/#alien_counter_03i#";\nOutput = { "log_#alien_counter#.txt", "res.root@disk=1" };\n'
    ).document
    piece = Piece((InputFile("/d/a.root"),), "SE1")
    sub = parse_job(write(subjob_document(doc, 41, 3, piece)))
    assert [(e.path, e.nodownload) for e in sub.input_data] == [("/d/a.root", True)]
    assert sub.output_dir == "/u/out/003"
    assert [o.to_dict()["members"] for o in sub.output] == [["log_3.txt"], ["res.root"]]
    assert sub.arguments == "--fast a.root"
    for key in ("Split", "SplitMaxInputFileNumber", "SplitArguments", "InputDataCollection"):
        assert sub.document.get(key) is None
    assert sub.extra["MasterJobID"].value == "41"  # type: ignore[attr-defined]
    assert split_spec(sub.document) is None  # a subjob is not split again


# -- collections --


def test_an_alice_xml_collection() -> None:
    xml = """<?xml version="1.0"?>
<alien>
  <collection name="wn.xml">
    <event name="1">
      <file name="AliESDs.root" lfn="/alice/data/2010/LHC10d/000126432/ESDs/pass2/10000126432019.10/AliESDs.root"
            turl="alien:///alice/data/2010/LHC10d/000126432/ESDs/pass2/10000126432019.10/AliESDs.root" size="1"/>
    </event>
    <event name="2">
      <file name="AliESDs.root" turl="alien:///alice/data/2010/LHC10d/000126432/ESDs/pass2/2.20/AliESDs.root"/>
    </event>
  </collection>
</alien>
"""
    assert parse_collection(xml, "wn.xml") == [
        "/alice/data/2010/LHC10d/000126432/ESDs/pass2/10000126432019.10/AliESDs.root",
        "/alice/data/2010/LHC10d/000126432/ESDs/pass2/2.20/AliESDs.root"]


def test_a_text_collection() -> None:
    text = "# inputs\nLF:/a/1.root\n\n  /a/2.root  \nlf:/a/3.root,nodownload\n"
    assert parse_collection(text, "list.txt") == ["/a/1.root", "/a/2.root", "/a/3.root"]


@pytest.mark.parametrize("text, message", [
    ("", "lists no file"),
    ("# only a comment\n", "lists no file"),
    ("LF:/a\nrelative/path\n", "line 2: 'relative/path' is not an LFN"),
    ("<alien><collection><file lfn='/a'/></collection>", "not well-formed XML"),
    ("<alien><file name='x'/></alien>", "file element 1 has neither lfn nor turl"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><alien/>', "a DOCTYPE or ENTITY is not allowed"),
])
def test_bad_collections_are_refused_naming_where(text: str, message: str) -> None:
    with pytest.raises(JdlError) as info:
        parse_collection(text, "c")
    assert message in info.value.message and "collection c" in info.value.message


# -- the masterjob's summary --


@pytest.mark.parametrize("counts, state", [
    ({S.DONE: 19, S.RUNNING: 1}, S.SPLIT),
    ({S.DONE: 3, S.ZOMBIE: 1}, S.SPLIT),
    ({S.DONE: 20}, S.DONE),
    ({S.DONE: 19, S.DONE_WARN: 1}, S.DONE_WARN),
    ({S.DONE: 10, S.ERROR_V: 1, S.ERROR_E: 2}, S.ERROR_E),
    ({S.ERROR_V: 1, S.ERROR_E: 1}, S.ERROR_V),
    ({S.KILLED: 5, S.DONE: 2}, S.KILLED),
    ({}, S.SPLIT),
])
def test_summary_state(counts, state) -> None:
    assert summary_state(counts) is state
