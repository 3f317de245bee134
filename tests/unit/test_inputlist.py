"""The InputDataList the JobWrapper writes (pilot/inputlist.py) and the JDL's checks of its name and format
(jdl/datalist.py): both formats read back by jdl/collection.py's reader (the one InputDataCollection uses) to the
same LFNs in the same order, XML escaping of awkward LFNs, an empty InputData, and every refusal leaving the work
directory as it was."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List

import pytest

from gridpilot.errors import JdlError
from gridpilot.jdl import parse_job
from gridpilot.jdl.collection import parse_collection
from gridpilot.pilot.inputlist import InputListError, ListedInput, render_xml, write_input_list

LFNS = ["/alice/data/2015/LHC15o/000245145/AliESDs.root", "/alice/sim/run 2/0001/AliAOD.root",
        "/alice/cern.ch/user/a/alice/x.root"]
#: LFNs XML must escape: what JAliEn writes unescaped into `lfn` and so makes unreadable.
AWKWARD = ['/alice/a&b/1.root', '/alice/say "hi"/2.root', "/alice/<tag>/3.root", "/alice/it's/4.root",
           "/alice/tab\there/5.root", "/alice/&amp;/6.root"]


def _listing(d: Path) -> List[str]:
    return sorted(p.name for p in d.iterdir())


def test_xml_single_reads_back_to_the_same_lfns_with_the_staged_copies_as_turls(tmp_path: Path) -> None:
    staged = tmp_path / "AliESDs.root"
    entries = [ListedInput(LFNS[0], staged, 1234), ListedInput(LFNS[1]), ListedInput(LFNS[2], tmp_path / "x.root", 7)]
    path = write_input_list(tmp_path, "wn.xml", "xml-single", entries)
    assert path == tmp_path / "wn.xml" and _listing(tmp_path) == ["wn.xml"]
    text = path.read_text()
    assert parse_collection(text, "wn.xml") == LFNS
    root = ET.fromstring(text)
    assert root.tag == "alien"
    (collection,) = root.findall("collection")
    assert collection.get("name") == "jobinputdata"
    events = collection.findall("event")
    assert [e.get("name") for e in events] == ["1", "2", "3"]
    files = [e.find("file") for e in events]
    assert [f.get("name") for f in files] == ["AliESDs.root", "AliAOD.root", "x.root"]
    # The staged copy where the payload opens it; a nodownload input (not staged) by JAliEn's alien:// turl.
    assert [f.get("turl") for f in files] == [f"file://{staged}", f"alien://{LFNS[1]}", f"file://{tmp_path}/x.root"]
    assert [f.get("size") for f in files] == ["1234", None, "7"]
    assert collection.find("info") is not None


def test_txt_list_is_one_lfn_a_line_and_reads_back(tmp_path: Path) -> None:
    path = write_input_list(tmp_path, "inputs.txt", "txt-list", [ListedInput(x) for x in LFNS])
    assert path.read_text() == "".join(f"{x}\n" for x in LFNS)
    assert parse_collection(path.read_text(), "inputs.txt") == LFNS


def test_an_lfn_listed_twice_is_one_file_as_in_jaliens_collection(tmp_path: Path) -> None:
    entries = [ListedInput(LFNS[0]), ListedInput(LFNS[1]), ListedInput(LFNS[0])]
    assert parse_collection(write_input_list(tmp_path, "wn.xml", None, entries).read_text()) == LFNS[:2]


def test_lfns_with_xml_specials_are_escaped_and_read_back_exactly(tmp_path: Path) -> None:
    path = write_input_list(tmp_path, "wn.xml", "xml-single", [ListedInput(x, tmp_path / "f") for x in AWKWARD])
    body = path.read_text()
    assert 'lfn="/alice/a&amp;b/1.root"' in body and 'lfn="/alice/say &quot;hi&quot;/2.root"' in body
    assert "&#9;" in body and 'lfn="/alice/&amp;amp;/6.root"' in body
    assert parse_collection(body, "wn.xml") == AWKWARD
    names = [f.get("name") for f in ET.fromstring(body).iter("file")]
    assert names == [x.rsplit("/", 1)[1] for x in AWKWARD]


def test_a_character_xml_cannot_hold_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(InputListError, match="U\\+0001"):
        write_input_list(tmp_path, "wn.xml", "xml-single", [ListedInput("/alice/a\x01b.root")])
    with pytest.raises(InputListError, match="line break"):
        write_input_list(tmp_path, "wn.txt", "txt-list", [ListedInput("/alice/a\nb.root")])
    assert _listing(tmp_path) == []


def test_an_empty_input_data_writes_an_empty_list(tmp_path: Path) -> None:
    body = write_input_list(tmp_path, "wn.xml", "xml-single", []).read_text()
    root = ET.fromstring(body)
    assert root.find("collection") is not None and list(root.iter("file")) == []
    # The reader of InputDataCollection refuses an empty collection: an empty list is still one the payload can read.
    with pytest.raises(JdlError, match="lists no file"):
        parse_collection(body, "wn.xml")
    assert write_input_list(tmp_path, "wn.txt", "txt-list", []).read_text() == ""


def test_without_a_format_xml_single_is_written_and_merge_is_xml_single(tmp_path: Path) -> None:
    a = write_input_list(tmp_path, "a.xml", None, [ListedInput(LFNS[0])]).read_text()
    b = write_input_list(tmp_path, "b.xml", "merge:/alice/coll.xml", [ListedInput(LFNS[0])]).read_text()
    assert a.startswith("<?xml") and b.startswith("<?xml") and parse_collection(b) == LFNS[:1]


@pytest.mark.parametrize("name", ["../wn.xml", "sub/wn.xml", "/tmp/wn.xml", ".", "..", "a\\b", " wn.xml", "w\nn",
                                  "x" * 256])
def test_a_name_that_is_not_a_plain_file_name_is_refused_by_the_writer(tmp_path: Path, name: str) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputListError, match="InputDataList"):
        write_input_list(tmp_path, name, "xml-single", [ListedInput(LFNS[0])])
    assert _listing(tmp_path) == ["sub"] and _listing(tmp_path / "sub") == []
    assert not (tmp_path.parent / "wn.xml").exists()


def test_an_unknown_format_is_refused_by_the_writer(tmp_path: Path) -> None:
    with pytest.raises(InputListError, match="xml-group.*xml-single, txt-list"):
        write_input_list(tmp_path, "wn.xml", "xml-group", [ListedInput(LFNS[0])])
    assert _listing(tmp_path) == []


def test_a_file_already_in_the_work_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "wn.xml").write_text("a staged input\n")
    with pytest.raises(InputListError, match="already in the work directory"):
        write_input_list(tmp_path, "wn.xml", "xml-single", [ListedInput(LFNS[0])])
    assert (tmp_path / "wn.xml").read_text() == "a staged input\n" and _listing(tmp_path) == ["wn.xml"]


def test_a_write_that_fails_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(InputListError, match="could not be written"):
        write_input_list(gone, "wn.xml", "xml-single", [ListedInput(LFNS[0])])
    assert _listing(tmp_path) == []

    # The rename fails (the temporary file was written): neither it nor the list is left behind.
    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(InputListError, match="No space left on device"):
        write_input_list(tmp_path, "wn.xml", "xml-single", [ListedInput(LFNS[0])])
    assert _listing(tmp_path) == []


def test_render_is_stable_but_for_its_info_line() -> None:
    one, two = render_xml([ListedInput(LFNS[0])], now=0.0), render_xml([ListedInput(LFNS[0])], now=0.0)
    assert one == two and 'timestamp="0"' in one


# -- the JDL side: `jdl check` and submission refuse what the wrapper would refuse -----------------------------------
@pytest.mark.parametrize("name", ["../wn.xml", "sub/wn.xml", "/tmp/wn.xml", "..", "."])
def test_the_jdl_refuses_an_input_data_list_that_is_not_a_plain_file_name(name: str) -> None:
    with pytest.raises(JdlError) as e:
        parse_job(f'Executable = "/bin/true";\nInputDataList = "{name}";\n')
    assert (e.value.line, e.value.column) == (2, 17) and "InputDataList" in str(e.value)


def test_the_jdl_refuses_an_unknown_format_naming_the_known_ones() -> None:
    with pytest.raises(JdlError, match="'xml-group' is not one gridpilot writes: xml-single, txt-list") as e:
        parse_job('Executable = "/bin/true";\nInputDataList = "wn.xml";\nInputDataListFormat = "xml-group";\n')
    assert e.value.line == 3


@pytest.mark.parametrize("fmt", ["xml-single", "txt-list", "merge:/alice/cern.ch/user/b/bogdan/collection.xml"])
def test_the_jdl_takes_the_formats_written(fmt: str) -> None:
    job = parse_job(f'Executable = "/bin/true";\nInputDataList = "wn.xml";\nInputDataListFormat = "{fmt}";\n')
    assert (job.input_data_list, job.input_data_list_format) == ("wn.xml", fmt)
