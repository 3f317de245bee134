"""The xRSL of a tower job: the offline runner as executable in the session, job.json and the inputs as inputs
(uploads with an empty source, ARC-staged ones with their URL), the whole session kept, resources from the JDL;
quotes doubled, control characters and paths leaving the session refused."""

from __future__ import annotations

import pytest

from gridpilot.tower import xrsl


def test_the_description_of_a_job():
    text = xrsl.build(xrsl.ArcJob("/cvmfs/gp/latest/x86_64/", "gridpilot-7.0", (("a.root", ""),
                                  ("b.root", "root://se.example.org//data/b.root")), cores=4, memory_mb=8000,
                                  wall_s=3600, queue="grid"))
    assert text.startswith('&(executable="/cvmfs/gp/latest/x86_64/bin/gridpilot")')
    assert ' (arguments="offline" ".")' in text
    assert ' (inputfiles=("job.json" "") ("a.root" "") ("b.root" "root://se.example.org//data/b.root"))' in text
    assert ' (outputfiles=("/" ""))' in text
    assert " (count=4)" in text and " (memory=2000)" in text  # per core
    assert f" (walltime={(3600 + xrsl.WALLTIME_MARGIN_S) // 60})" in text and ' (queue="grid")' in text
    assert ' (jobname="gridpilot-7.0")' in text


def test_quotes_are_doubled_and_control_characters_refused():
    assert xrsl.quote('a"b', "x") == '"a""b"'
    with pytest.raises(ValueError, match=r"xRSL attribute jobname: control character '\\n'"):
        xrsl.build(xrsl.ArcJob("/gp", "bad\nname", ()))


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs", "a//b", "", "job.json"])
def test_an_input_name_outside_the_session_or_twice_is_refused(name):
    with pytest.raises(ValueError):
        xrsl.build(xrsl.ArcJob("/gp", "j", ((name, ""),)))


def test_no_queue_no_queue_attribute():
    assert "queue" not in xrsl.build(xrsl.ArcJob("/gp", "j", ()))
