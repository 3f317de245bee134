"""`gridpilot submit`'s JDL side without central: $N arguments, which entries are local files, the rewrite to LFNs."""

from __future__ import annotations

import pytest

from gridpilot.jdl.loader import parse_job
from gridpilot.jdl.nodes import ListValue
from gridpilot.jdl.writer import write
from gridpilot.sandbox import SandboxError, find_local_files, prepare, rewrite, substitute_arguments

# -- $N --


def test_arguments_replace_their_numbers_textually():
    text = 'Executable = "run.sh";\nArguments = "$1 $2 $10";\nOutputDir = "/u/$2/out";\n'
    args = [f"a{i}" for i in range(1, 11)]
    out, warnings = substitute_arguments(text, args, "x.jdl")
    assert out == 'Executable = "run.sh";\nArguments = "a1 a2 a10";\nOutputDir = "/u/a2/out";\n'
    unused = ", ".join(f"${n}" for n in range(3, 10))
    assert warnings == [f"x.jdl: warning: 10 argument(s) given, but the JDL never uses {unused}"]


def test_double_dollar_is_a_literal_dollar_and_never_an_argument():
    out, warnings = substitute_arguments('Arguments = "$$1 costs $$ $1 $0 $x";', ["one"])
    assert out == 'Arguments = "$1 costs $ one $0 $x";'
    assert warnings == []


def test_a_missing_argument_names_its_line():
    text = 'Executable = "run.sh";\nArguments = "$1 $2";\n\nInputFile = {"$3"};\n'
    with pytest.raises(SandboxError) as e:
        substitute_arguments(text, ["a", "b"], "job.jdl")
    assert str(e.value).startswith("job.jdl:4: $3 needs argument 3, only 2 argument(s) given")


def test_no_argument_at_all_is_said_so():
    with pytest.raises(SandboxError, match=r"j.jdl:1: \$1 needs argument 1, no argument given"):
        substitute_arguments('Arguments = "$1";', [], "j.jdl")


def test_arguments_without_any_dollar_warn():
    out, warnings = substitute_arguments('Executable = "/bin/true";', ["x"], "j.jdl")
    assert out == 'Executable = "/bin/true";'
    assert warnings == ["j.jdl: warning: 1 argument(s) given, but the JDL never uses $1"]


def test_an_argument_with_jdl_syntax_in_it_is_inserted_as_is():
    # Textual, as ALICE's: the user quotes what needs quoting. A quote in an argument breaks the JDL, and the parse
    # error says where.
    out, _ = substitute_arguments('Arguments = "$1";', ['a"b'])
    with pytest.raises(Exception, match="line 1"):
        parse_job(out)


# -- local files --


def _doc(text: str):
    return parse_job(text).document


def test_local_files_are_relative_executables_and_inputs_without_lf(tmp_path):
    (tmp_path / "my.sh").write_text("#!/bin/sh\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("x")
    absolute = tmp_path / "abs.txt"
    absolute.write_text("y")
    doc = _doc(f'Executable = "my.sh";\nInputFile = {{"data/in.txt", "LF:/gridpilot/x.root",\n'
               f'  "{absolute},nodownload", "file:my.sh"}};\n')
    files = find_local_files(doc, tmp_path, "j.jdl")
    assert [(f.attribute, f.line, f.path, f.options) for f in files] == [
        ("Executable", 1, tmp_path / "my.sh", ""),
        ("InputFile", 2, tmp_path / "data" / "in.txt", ""),
        ("InputFile", 3, absolute, "nodownload"),
        ("InputFile", 3, tmp_path / "my.sh", ""),
    ]


@pytest.mark.parametrize("exe", ["/bin/sh", "/alice/cern.ch/user/a/aliprod/bin/sim.sh", "LF:/gridpilot/bin/x.sh"])
def test_absolute_and_catalogue_executables_stay_where_they_are(tmp_path, exe):
    assert find_local_files(_doc(f'Executable = "{exe}";'), tmp_path, "j.jdl") == []


def test_file_prefix_ships_an_absolute_executable(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    (f,) = find_local_files(_doc(f'Executable = "file:{script}";'), tmp_path / "elsewhere", "j.jdl")
    assert f.path == script


@pytest.mark.parametrize("jdl, attribute, line, name", [
    ('Executable = "my.sh";', "Executable", 1, "my.sh"),
    ('Executable = "/bin/true";\nInputFile = {\n  "LF:/a/b",\n  "input.dat"\n};', "InputFile", 4, "input.dat"),
    ('Executable = "/bin/true";\nInputFile = "file:sub/x.txt";', "InputFile", 2, "sub/x.txt"),
])
def test_a_missing_local_file_names_file_line_and_attribute(tmp_path, jdl, attribute, line, name):
    with pytest.raises(SandboxError) as e:
        find_local_files(_doc(jdl), tmp_path, "my.jdl")
    msg = str(e.value)
    assert msg.startswith(f"my.jdl:{line}: {attribute} "), msg
    assert f"no such local file {tmp_path / name}" in msg
    assert "\n" not in msg


def test_a_directory_is_not_a_local_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(SandboxError, match="is not a regular file"):
        find_local_files(_doc('Executable = "/bin/true";\nInputFile = {"d"};'), tmp_path, "j.jdl")


def test_two_files_with_one_name_are_refused(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.txt").write_text(d)
    with pytest.raises(SandboxError, match=r"j.jdl:1: InputFile 'b/x.txt' has the same file name as InputFile "
                                           r"'a/x.txt' on line 1"):
        find_local_files(_doc('Executable = "/bin/true"; InputFile = {"a/x.txt", "b/x.txt"};'), tmp_path, "j.jdl")


def test_prepare_resolves_against_the_jdl_directory_after_substitution(tmp_path):
    (tmp_path / "in-7.txt").write_text("7")
    jdl = tmp_path / "j.jdl"
    text = 'Executable = "/bin/cat";\nArguments = "in-$1.txt";\nInputFile = {"in-$1.txt"};\n'
    jdl.write_text(text)
    substituted, doc, files, warnings = prepare(text, ["7"], str(jdl))
    assert 'Arguments = "in-7.txt"' in substituted and warnings == []
    assert [f.path for f in files] == [tmp_path / "in-7.txt"]


# -- the rewrite --


def test_rewrite_puts_lfns_in_place_and_keeps_options(tmp_path):
    doc = _doc('Executable = "my.sh";\nInputFile = {"in.txt,nodownload", "LF:/keep/me"};\nTTL = 60;\n')
    out = rewrite(doc, {"my.sh": "/u/sandbox/h/my.sh", "in.txt,nodownload": "/u/sandbox/h/in.txt"})
    assert out.get("Executable").value == "/u/sandbox/h/my.sh"
    inputs = out.get("InputFile")
    assert isinstance(inputs, ListValue)
    assert [i.value for i in inputs.items] == ["LF:/u/sandbox/h/in.txt,nodownload", "LF:/keep/me"]
    job = parse_job(write(out))  # what central gets parses, with the same other keys
    assert job.ttl == 60 and job.executable == "/u/sandbox/h/my.sh"
    assert [(e.path, e.catalogue, e.nodownload) for e in job.input_file] == [
        ("/u/sandbox/h/in.txt", True, True), ("/keep/me", True, False)]


def test_rewrite_turns_an_lf_executable_into_the_bare_lfn_the_wrapper_fetches():
    out = rewrite(_doc('Executable = "LF:/gridpilot/bin/x.sh";'), {})
    assert out.get("Executable").value == "/gridpilot/bin/x.sh"


# -- which storage element --


def test_central_default_storage_element():
    from gridpilot.central.catalogue import INIT_SE_NAME, default_storage_element

    a, b = {"name": "SITE::A::DISK", "url": "file:///a"}, {"name": "SITE::B::DISK", "url": "file:///b"}
    init = {"name": INIT_SE_NAME, "url": "file:///c"}
    assert default_storage_element([a, b, init], "site::b::disk") == "SITE::B::DISK"  # the setting, any case
    assert default_storage_element([a, b, init], "NOT::CONFIGURED::SE") == INIT_SE_NAME
    assert default_storage_element([a], None) == "SITE::A::DISK"  # the only one
    assert default_storage_element([a, b], None) is None  # no choice made: the user must name one
    assert default_storage_element([], None) is None


def test_the_user_side_choice_of_storage_element():
    from gridpilot.errors import ConfigError
    from gridpilot.userupload import choose_element

    elements = [{"name": "SITE::A::DISK", "url": "file:///a"}, {"name": "SITE::B::DISK", "url": "file:///b"}]
    assert choose_element(elements, "SITE::A::DISK", None).name == "SITE::A::DISK"
    assert choose_element(elements, "SITE::A::DISK", "site::b::disk").url == "file:///b"
    with pytest.raises(ConfigError, match=r"--se 'X::Y::Z': no such storage element \(central has: SITE::A::DISK, "
                                          r"SITE::B::DISK\)"):
        choose_element(elements, None, "X::Y::Z")
    with pytest.raises(ConfigError, match="central names no default storage element .* choose one with --se NAME"):
        choose_element(elements, None, None)
