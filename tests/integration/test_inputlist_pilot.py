"""`InputDataList = "wn.xml"` end to end: a real central, runner, JobAgent, JobWrapper and payloads
(tests/support/pilot.py). The JobWrapper writes each subjob's list of its own InputData before the payload starts,
as JAliEn's does; the payload reads it, opens the staged copies it points to, and uploads what it saw, which the
test reads back with jdl/collection.py's reader (the one InputDataCollection uses)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from support.pilot import Pilot, pilot_grid

from gridpilot.errors import CentralError
from gridpilot.jdl import parse_job
from gridpilot.jdl.collection import parse_collection

#: The payload (an executable in the catalogue): copy the list it found, and the content of each staged copy the
#: list's turls point to (an `&` in a path is `&amp;` in the XML). Fails if the list is missing or a turl names no file.
PAYLOAD = """#!/bin/sh
set -e
test -f wn.xml
cp wn.xml seen.xml
: > contents.txt
grep -o 'turl="file://[^"]*"' wn.xml | sed -e 's/^turl="file:\\/\\///' -e 's/"$//' -e 's/&amp;/\\&/g' \\
    | while IFS= read -r f; do cat "$f" >> contents.txt; done
"""


@pytest.fixture
def pilot() -> Iterator[Pilot]:
    # The job whose list cannot be written ends ERROR_IB, which central otherwise retries elsewhere (and this one
    # node, seeing it fail again and again, would leave as nodeBad).
    with pilot_grid(central={"max_auto_resubmits": 0}) as p:
        yield p


def _own_area(pilot: Pilot) -> str:
    return str(pilot.grid.user.areas()["areas"][0]["path"])


def _read_lfn(pilot: Pilot, lfn: str) -> str:
    (rep,) = pilot.grid.user.lookup_file(lfn)["replicas"]
    return Path(rep["pfn"][len("file://"):]).read_text()


def _wait_master(pilot: Pilot, master: int, timeout: float) -> Dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = pilot.job(master)
        if job["state"] != "SPLIT" or time.monotonic() > deadline:
            return job
        pilot._check_runner_alive()
        time.sleep(1.0)


def test_each_subjob_finds_exactly_its_own_inputs_in_wn_xml(pilot: Pilot, tmp_path: Path) -> None:
    area = _own_area(pilot)
    inputs: List[str] = []
    content: Dict[str, str] = {}
    # Two directories: Split = "directory" gives one subjob each; one LFN has an `&`, which the XML must escape.
    for d, names in (("run1", ["a.root", "b&c.root"]), ("run2", ["d.root", "e.root", "f.root"])):
        for n in names:
            local = tmp_path / f"{d}-{n}"
            local.write_text(f"content of {d}/{n}\n")
            lfn = f"{area}/data/{d}/{n}"
            pilot.grid.register_local_file(local, lfn)
            inputs.append(lfn)
            content[lfn] = local.read_text()
    (tmp_path / "readlist.sh").write_text(PAYLOAD)
    pilot.grid.register_local_file(tmp_path / "readlist.sh", f"{area}/bin/readlist.sh")
    jdl = (
        f'Executable = "{area}/bin/readlist.sh";\n'
        'Split = "directory";\n'
        "InputData = {" + ", ".join(f'"LF:{x}"' for x in inputs) + "};\n"
        'InputDataList = "wn.xml";\nInputDataListFormat = "xml-single";\n'
        f'OutputDir = "{area}/seen/#alien_counter#";\n'
        'Output = { "seen.xml@disk=1", "contents.txt@disk=1" };\n'
        "TTL = 120;\nForcedKillTimeout = 2;\n")
    master = pilot.submit(jdl, name="wn.jdl")
    # The same list as txt-list, for a job that is not split.
    single = pilot.submit(
        'Executable = "/bin/sh";\nArguments = "-c \'cp inputs.txt seen.txt\'";\n'
        f'InputData = {{"LF:{inputs[2]}", "LF:{inputs[0]}"}};\n'
        'InputDataList = "inputs.txt";\nInputDataListFormat = "txt-list";\n'
        f'OutputDir = "{area}/single";\nOutput = {{ "seen.txt@disk=1" }};\nTTL = 120;\n')
    # InputDataList names a file an input is staged to: the wrapper does not replace it, the job ends in error.
    clash = pilot.submit(
        'Executable = "/bin/true";\n'
        f'InputData = {{"LF:{inputs[0]}"}};\nInputDataList = "a.root";\nTTL = 60;\n')

    # A name that is not a plain file name, or a format not written: refused at submission, naming it.
    for bad, why in (('InputDataList = "../wn.xml";', "InputDataList '../wn.xml' must be a plain file name"),
                     ('InputDataList = "wn.xml"; InputDataListFormat = "xml-group";',
                      "InputDataListFormat 'xml-group' is not one gridpilot writes")):
        with pytest.raises(CentralError) as refused:
            pilot.submit(f'Executable = "/bin/true";\n{bad}\n')
        assert refused.value.status == 400 and why in str(refused.value), refused.value

    pilot.start(container_runtime="none", cores=2, max_empty_matches=2)
    assert _wait_master(pilot, master, timeout=300)["state"] == "DONE", pilot.runner_log()[-4000:]
    info = pilot.grid.user.masterjob(master, ids=True)
    subjobs = sorted(info["ids"]["DONE"])
    assert len(subjobs) == 2, info
    seen_all: List[str] = []
    for sub in subjobs:
        job = pilot.job(sub)
        own = [e.path for e in parse_job(job["jdl"]).input_data]
        d = job["output_dir"]
        seen = parse_collection(_read_lfn(pilot, f"{d}/seen.xml"), "seen.xml")
        # Exactly its own slice, in its order; and each turl was the staged copy of that very file.
        assert seen == own, (sub, seen, own)
        assert _read_lfn(pilot, f"{d}/contents.txt") == "".join(content[x] for x in own)
        seen_all += seen
        text = pilot.trace_text(sub)
        assert f"Going to create XML: wn.xml (xml-single, {len(own)} input file(s))" in text, text
    # Two slices (one per directory), together every input once.
    assert sorted(seen_all) == sorted(inputs) and len(seen_all) == len(inputs)

    done = pilot.wait_state(single, ["DONE"], timeout=120)
    assert done["state"] == "DONE"
    assert _read_lfn(pilot, f"{area}/single/seen.txt") == f"{inputs[2]}\n{inputs[0]}\n"

    failed = pilot.wait_final([clash], timeout=120)[0]
    assert failed["state"] == "ERROR_IB", pilot.describe(clash)
    pilot.assert_kill_reason_shown(clash, "INPUT_FILES")
    assert ("[FATAL]: the InputDataList could not be written: InputDataList a.root would replace a.root, already in "
            "the work directory") in pilot.trace_text(clash)
    pilot.stop()
