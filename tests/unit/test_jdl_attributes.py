"""Unknown JDL attributes and their did-you-mean (gridpilot.jdl.attributes): what is known, what is suggested."""

from __future__ import annotations

import pytest
from support import paths

from gridpilot.jdl import KNOWN_KEYS, load_document, parse
from gridpilot.jdl.attributes import ALICE_KEYS, UnknownAttribute, is_known, suggest, unknown_attributes


@pytest.mark.parametrize("typo, known", [
    ("TLL", "TTL"),                 # a doubled letter in a three-letter key
    ("tll", "TTL"),                 # and in lower case: the suggestion is ALICE's spelling
    ("Executabel", "Executable"),   # two letters swapped
    ("cpucore", "CPUCores"),        # a letter missing, case ignored
    ("MEMORYSISE", "MemorySize"),   # a letter wrong, all upper case
    ("Requirement", "Requirements"),
    ("Packges", "Packages"),
    ("JobTags", "JobTag"),          # an ALICE key the pilot does not read is suggested too
    ("SplitMaxInputFileNumbr", "SplitMaxInputFileNumber"),
])
def test_a_close_misspelling_suggests_the_key(typo: str, known: str) -> None:
    assert suggest(typo) == known


@pytest.mark.parametrize("name", ["Foo", "Energy", "NEvents", "Seed", "x", "ZZZZZZZZZZ"])
def test_nothing_close_suggests_nothing(name: str) -> None:
    assert suggest(name) is None


def test_the_suggestion_is_the_closest_key() -> None:
    # OutputDi is one letter from OutputDir and further from Output, OutputFile, OutputArchive.
    assert suggest("OutputDi") == "OutputDir"
    assert suggest("InputDat") == "InputData"


def test_known_keys_are_known_in_any_case() -> None:
    for key in (*KNOWN_KEYS, *ALICE_KEYS, "DemoExpect"):
        assert is_known(key) and is_known(key.lower()) and is_known(key.upper()), key
    assert not is_known("TLL")


def test_unknown_attributes_in_order_with_place_and_suggestion() -> None:
    doc = parse('Executable = "/bin/true";\nTLL = 3600;\n  Foo = 1;\nttl = 60;\nCPUcores = 2;\n')
    assert unknown_attributes(doc) == [
        UnknownAttribute("TLL", 2, 1, "TTL"),
        UnknownAttribute("Foo", 3, 3, None),
    ]
    assert unknown_attributes(doc)[0].message() == "unknown attribute 'TLL' (did you mean 'TTL'?)"
    assert unknown_attributes(doc)[1].message() == "unknown attribute 'Foo'"


def test_a_key_exported_through_jdl_variables_is_a_user_variable() -> None:
    doc = parse('Executable = "/bin/true";\nDataPeriod = "LHC23f";\nrunNumber = 5;\nOther = 1;\n'
                'JDLVariables = {"dataperiod", "RunNumber"};\n')
    assert [u.key for u in unknown_attributes(doc)] == ["Other"]
    # A single string names one variable, as ALICE allows.
    doc = parse('Executable = "/bin/true";\nDataPeriod = "LHC23f";\nJDLVariables = "DataPeriod";\n')
    assert unknown_attributes(doc) == []


def test_no_warning_on_any_real_alice_jdl_or_example() -> None:
    """The known set holds every key of the 33 real ALICE JDLs and of examples/: a warning there would be noise."""
    files = sorted((paths.FIXTURES / "jdl" / "alice").glob("*.jdl")) + sorted((paths.ROOT / "examples").rglob("*.jdl"))
    assert len(files) > 33
    for path in files:
        assert unknown_attributes(load_document(path)) == [], path
