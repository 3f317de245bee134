"""Real ALICE JDLs from public repositories (tests/fixtures/jdl/alice, sources in its README): every one parses,
its JobDescription has the outputs it names, and it survives parse -> write -> parse. The few that ALICE's JAliEn
reads but gridpilot refuses (alice/refused) are refused with one line saying where and how to write it."""

from __future__ import annotations

import pathlib
import re
from typing import List, Set, Tuple

import pytest

from gridpilot.errors import JdlError
from gridpilot.jdl import JobDescription, ListValue, String, load, parse, parse_job, parse_output_spec, write
from support import paths

ROOT = paths.ROOT
ALICE = ROOT / "tests" / "fixtures" / "jdl" / "alice"
CORPUS = sorted(ALICE.glob("*.jdl"))
REFUSED = sorted((ALICE / "refused").glob("*.jdl"))
OUTPUT_KEYS = ("Output", "OutputFile", "OutputArchive")


def _named_outputs(text: str) -> Tuple[Set[str], Set[str]]:
    """(archive names, plain file names) the JDL text names under Output, OutputFile and OutputArchive, read the
    way JAliEn's JDL.getOutputFileSet reads them (cut at '@', an archive before ':', names split at ','), from the
    raw strings: independent of gridpilot's output spec parser."""
    doc = parse(text)
    archives: Set[str] = set()
    files: Set[str] = set()
    for key in OUTPUT_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        items = value.items if isinstance(value, ListValue) else (value,)
        for item in items:
            assert isinstance(item, String)
            head = item.value.split("@", 1)[0]
            if ":" in head:
                archives.add(head.split(":", 1)[0].strip())
            else:
                files.update(n.strip() for n in head.split(",") if n.strip())
    return archives, files


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 20
    texts = {p.name: p.read_text() for p in CORPUS}
    repos = {name.split("--", 1)[0] for name in texts}
    assert {"alisw-AliPhysics", "alisw-AliDPG"} <= repos
    kinds = {
        "MC production": [n for n, t in texts.items() if re.search(r'split\s*=\s*"production:', t, re.I)],
        "analysis train": [n for n, t in texts.items() if "Automatically generated analysis JDL\"" in t],
        "merging": [n for n, t in texts.items() if re.search(r"merg", n, re.I)],
        "calibration / reconstruction": [n for n, t in texts.items() if "raw/#alienfilename#" in t],
        "user job": [n for n, t in texts.items() if re.search(r"/alice/cern\.ch/user/", t)],
    }
    assert all(len(v) >= 2 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}


def test_the_corpus_holds_every_construct_ALICE_accepts_that_was_refused() -> None:
    """Each construct the issue found refused appears in at least one real file (so the per-file test below
    covers it): a key set twice to the same value, `noarchive`, an archive name without .zip, a trailing comma
    before '@', a trailing comma in a list, and the `Output` key."""
    texts = [p.read_text() for p in CORPUS]
    constructs = {
        "GUIDFILE twice": lambda t: len(re.findall(r"^GUIDFILE\s*=", t, re.M)) == 2,
        "noarchive": lambda t: ",noarchive\"" in t,
        "archive without .zip": lambda t: re.search(r'"[A-Za-z_]+:[^"@]*@', t) is not None,
        "trailing comma before @": lambda t: ",@disk=" in t,
        "trailing comma in a list": lambda t: re.search(r",\s*\n\s*}", t) is not None,
        "Output key": lambda t: re.search(r"^Output\s*=", t, re.M) is not None,
    }
    counts = {name: sum(1 for t in texts if found(t)) for name, found in constructs.items()}
    assert all(counts.values()), counts


def test_the_readme_cites_every_file() -> None:
    readme = (ALICE / "README.md").read_text()
    for path in CORPUS + REFUSED:
        lines = [line for line in readme.splitlines() if path.name in line]
        assert len(lines) == 1, path.name
        assert re.search(r"\b[0-9a-f]{40}\b", lines[0]), f"{path.name}: no commit in {lines[0]!r}"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_real_jdl_parses_has_its_outputs_and_round_trips(path: pathlib.Path) -> None:
    text = path.read_text()
    job = load(path)

    # The outputs it names are the job's outputs, whichever of the three keys names them.
    archives, files = _named_outputs(text)
    assert archives or files, "every file in the corpus names outputs"
    assert {o.archive for o in job.outputs if o.archive is not None} == archives
    assert {m for o in job.outputs if o.archive is None for m in o.members} == files
    for key in OUTPUT_KEYS:
        assert key.lower() not in {k.lower() for k in job.extra}
        value = job.document.get(key)
        count = 0 if value is None else len(value.items) if isinstance(value, ListValue) else 1
        assert len({"Output": job.output, "OutputFile": job.output_file, "OutputArchive": job.output_archive}[key]) \
            == count
    for spec in job.outputs + job.output_error_e:
        assert parse_output_spec(spec.to_text()) == spec

    # parse -> write -> parse: the same document and the same job description; writing again changes nothing.
    written = write(job.document)
    again = parse(written)
    assert again == job.document and again.keys() == job.document.keys()
    assert parse_job(written) == job
    assert write(again) == written


def _refusal(path: pathlib.Path) -> JdlError:
    with pytest.raises(JdlError) as info:
        load(path)
    return info.value


@pytest.mark.parametrize("path", REFUSED, ids=[p.name for p in REFUSED])
def test_unquoted_list_items_are_refused_with_the_way_to_write_them(path: pathlib.Path) -> None:
    # JAliEn takes `{stdout@disk=1}` as one item "stdout@disk=1" and `{testflag,t2}` as one item "testflag,t2";
    # gridpilot asks for the quotes that make both readings the same.
    e = _refusal(path)
    assert e.path == str(path) and e.line >= 1 and e.column >= 1
    assert 'list items are written in double quotes, as in { "stdout@disk=1" }' in e.message
    line = path.read_text().splitlines()[e.line - 1]
    assert line[e.column - 2] == "{", (line, e.column)


def test_refused_files_parse_once_quoted() -> None:
    """What the refusal asks for is enough: quoting the items makes each refused file a job with its outputs."""
    jobs: List[JobDescription] = []
    for path in REFUSED:
        quoted = re.sub(r"\{([^\"}]+)\}", lambda m: '{"' + m.group(1) + '"}', path.read_text())
        jobs.append(parse_job(quoted, str(path)))
    assert all(j.output for j in jobs)
