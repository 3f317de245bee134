"""`gridpilot jdl check` and `gridpilot jdl show`, run as a user would (python -m gridpilot ...)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import List

import orjson
import pytest
from support import paths

ROOT = paths.ROOT
EXAMPLES = sorted((ROOT / "examples").glob("*.jdl"))
BAD = ROOT / "tests" / "fixtures" / "jdl" / "bad"


def gridpilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpilot", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_every_example() -> None:
    r = gridpilot("jdl", "check", *[str(p.relative_to(ROOT)) for p in EXAMPLES])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == f"{len(EXAMPLES)} JDL files OK\n"


# file -> (line, column, part of the message)
BAD_FILES = {
    "unclosed_string.jdl": (4, 13, "unclosed string starting at line 4, column 13"),
    "missing_semicolon.jdl": (2, 11, "expected ';' after the value of 'TTL', found identifier 'CPUCores'"),
    "list_missing_comma.jdl": (4, 5, "expected ',' or '}' in the list starting at line 2, column 13"),
    "missing_executable.jdl": (2, 1, "missing required key 'Executable'"),
    "cpu_cores_out_of_range.jdl": (2, 12, "CPUCores must be between 1 and 100, got 128"),
    "archive_without_name.jdl": (4, 5, "expected an archive name and ':'"),
    "size_without_unit.jdl": (2, 14, "MemorySize needs a unit K, M, G or T"),
    "unbalanced_requirements.jdl": (2, 80, "expected ')' to close the '(' at line 2, column 16, found ';'"),
    "duplicate_key.jdl": (3, 1, "duplicate key 'ttl': already set as 'TTL' at line 2, column 1"),
    "forced_kill_timeout_too_long.jdl": (2, 21, "ForcedKillTimeout must be between 0 and 600 seconds, got 900"),
    "undefined_jdl_variable.jdl": (2, 29, "JDLVariables names 'DataPeriod', which this JDL does not set"),
    "unclosed_bracket.jdl": (4, 1, "unclosed '[' starting at line 1, column 1: expected ']'"),
    "unknown_function.jdl": (2, 35, "unknown function 'regexp'"),
    "input_data_list_path.jdl": (2, 17, "InputDataList '../wn.xml' must be a plain file name in the job's work "
                                        "directory (no '/')"),
    "input_data_list_format_unknown.jdl": (3, 23, "InputDataListFormat 'xml-group' is not one gridpilot writes: "
                                                  "xml-single, txt-list"),
}


def test_every_bad_fixture_is_listed() -> None:
    assert {p.name for p in BAD.glob("*.jdl")} == set(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gives_one_clear_error(name: str) -> None:
    line, column, message = BAD_FILES[name]
    path = f"tests/fixtures/jdl/bad/{name}"
    r = gridpilot("jdl", "check", path)
    assert r.returncode == 1
    out: List[str] = r.stdout.splitlines()
    assert len(out) == 1, r.stdout
    m = re.fullmatch(r"(.+):(\d+):(\d+): (.+)", out[0])
    assert m is not None, out[0]
    assert (m.group(1), int(m.group(2)), int(m.group(3))) == (path, line, column)
    assert message in m.group(4)
    assert "1 of 1 JDL file invalid" in r.stderr


def test_check_reports_every_bad_file_among_good_ones() -> None:
    bad = sorted(str(p.relative_to(ROOT)) for p in BAD.glob("*.jdl"))
    r = gridpilot("jdl", "check", str(EXAMPLES[0].relative_to(ROOT)), *bad, "no/such/file.jdl")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == len(bad) + 1
    assert lines[-1].startswith("no/such/file.jdl: cannot read")
    assert f"{len(bad) + 1} of {len(bad) + 2} JDL files invalid" in r.stderr


def test_check_non_utf8_file(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "latin1.jdl"
    p.write_bytes(b'Executable = "/bin/true";\nUser = "j\xf6rg";\n')
    r = gridpilot("jdl", "check", str(p))
    assert r.returncode == 1
    assert r.stdout.startswith(f"{p}:2:10: not UTF-8 text")


def test_show_prints_the_typed_description() -> None:
    r = gridpilot("jdl", "show", "examples/analysis_train.jdl")
    assert r.returncode == 0, r.stderr
    data = orjson.loads(r.stdout)
    assert data["cpu_cores"] == 2 and data["memory_size"] == 4 << 30 and data["ttl"] == 10800
    assert data["jdl_variables"]["ALIEN_JDL_WAGONNAMES"] == (
        "hf-tree-creator-d0##hf-candidate-selector-d0##hf-track-index-skim"
    )
    assert data["input_data_collection"][0]["nodownload"] is True
    assert data["requirements"] == 'other.TTL > 10800 && member(other.GridPartitions, "multicore_2")'
    assert data["extra"]["Split"] == "se"


def test_show_bad_file_fails_with_the_error() -> None:
    r = gridpilot("jdl", "show", "tests/fixtures/jdl/bad/unclosed_string.jdl")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("tests/fixtures/jdl/bad/unclosed_string.jdl:4:13: unclosed string")


def test_jdl_without_action_is_a_usage_error() -> None:
    r = gridpilot("jdl")
    assert r.returncode == 2


TYPO_JDL = 'Executable = "/bin/true";\nTLL = 3600;\n  Energy = "13TeV";\nCPUCores = 2;\n'


def test_check_warns_of_unknown_attributes_with_did_you_mean(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "typo.jdl"
    p.write_text(TYPO_JDL)
    r = gridpilot("jdl", "check", str(p), "examples/local_demo.jdl")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"{p}:2:1: warning: unknown attribute 'TLL' (did you mean 'TTL'?)",
        f"{p}:3:3: warning: unknown attribute 'Energy'",
        "2 JDL files OK, 2 warnings",
    ]


def test_strict_makes_unknown_attributes_errors(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "typo.jdl"
    p.write_text(TYPO_JDL)
    r = gridpilot("jdl", "check", "--strict", str(p), "examples/local_demo.jdl")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{p}:2:1: unknown attribute 'TLL' (did you mean 'TTL'?)",
        f"{p}:3:3: unknown attribute 'Energy'",
    ]
    assert "1 of 2 JDL files invalid" in r.stderr
    # Strict changes nothing for a file without unknown attributes.
    r = gridpilot("jdl", "check", "--strict", *[str(e.relative_to(ROOT)) for e in EXAMPLES])
    assert r.returncode == 0 and r.stdout == f"{len(EXAMPLES)} JDL files OK\n"


def test_unknown_attributes_are_warned_of_even_when_the_job_is_invalid(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "both.jdl"
    p.write_text('Executabel = "/bin/true";\n')
    r = gridpilot("jdl", "check", str(p))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{p}:1:1: warning: unknown attribute 'Executabel' (did you mean 'Executable'?)",
        f"{p}:1:1: missing required key 'Executable'",
    ]


def test_check_json(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "typo.jdl"
    p.write_text(TYPO_JDL)
    r = gridpilot("jdl", "check", "--json", str(p), "tests/fixtures/jdl/bad/unclosed_string.jdl", "no/such.jdl")
    assert r.returncode == 1 and r.stderr == ""
    typo, unclosed, missing = orjson.loads(r.stdout)
    assert typo == {"file": str(p), "ok": True, "errors": [], "warnings": [
        {"attribute": "TLL", "line": 2, "column": 1, "suggestion": "TTL",
         "message": "unknown attribute 'TLL' (did you mean 'TTL'?)"},
        {"attribute": "Energy", "line": 3, "column": 3, "suggestion": None, "message": "unknown attribute 'Energy'"},
    ]}
    assert unclosed["ok"] is False and unclosed["warnings"] == []
    assert (unclosed["errors"][0]["line"], unclosed["errors"][0]["column"]) == (4, 13)
    assert missing["ok"] is False and missing["errors"][0]["line"] is None
    assert missing["errors"][0]["message"].startswith("cannot read")
    r = gridpilot("jdl", "check", "--json", "--strict", str(p))
    assert r.returncode == 1
    [strict] = orjson.loads(r.stdout)
    assert strict["ok"] is False and strict["warnings"] == []
    assert [e["attribute"] for e in strict["errors"]] == ["TLL", "Energy"]
    r = gridpilot("jdl", "check", "--json", "examples/local_demo.jdl")
    assert r.returncode == 0 and orjson.loads(r.stdout)[0]["ok"] is True


def test_the_users_page_shows_what_check_prints(tmp_path: pathlib.Path) -> None:
    """docs/users.md's example of an unknown attribute, run: the page shows the command's real output."""
    page = (ROOT / "docs" / "users.md").read_text()
    block = re.search(r"```text\n\$ gridpilot jdl check typo\.jdl\n(.*?)```", page, re.S)
    assert block is not None
    (tmp_path / "typo.jdl").write_text('Executable = "/bin/true";\nTLL = 86400;\nEnergy = "13TeV";\n')
    r = subprocess.run([sys.executable, "-m", "gridpilot", "jdl", "check", "typo.jdl"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == block.group(1)
