"""The packages environment's pure parts (pilot/packages.py): package names as alienv and Environment Modules know
them, the command line, the `env -0` dump the evaluating shell prints (quoting survives as the shell left it;
hostile dumps are refused with a reason), what the packages changed, and the order that keeps gridpilot's job
variables. The shell itself, the command's bounds and real jobs: tests/integration/test_packages_command.py and
test_packages_pilot.py."""

from __future__ import annotations

import pytest

from gridpilot.config import PilotConfig
from gridpilot.pilot import packages
from gridpilot.pilot.packages import PackagesError, PackagesSettings


@pytest.mark.parametrize("package, name", [
    ("VO_ALICE@O2PDPSuite::v1", "O2PDPSuite/v1"),
    ("VO_ALICE@O2Physics::daily-20240610-0000-1", "O2Physics/daily-20240610-0000-1"),
    ("VO_ALICE@AliPhysics::v5-09-59k-01_ROOT6-1", "AliPhysics/v5-09-59k-01_ROOT6-1"),
    ("VO_ALICE@APISCONFIG::V2.4", "APISCONFIG/V2.4"),
    ("VO_ALICE@APISCONFIG", "APISCONFIG"),
    ("ROOT::v6-32-06-alice1-1", "ROOT/v6-32-06-alice1-1"),
    ("GCC-Toolchain", "GCC-Toolchain"),
])
def test_package_names_become_module_names(package, name):
    assert packages.module_name(package) == name


@pytest.mark.parametrize("package", [
    "-rf", "VO_ALICE@--help::1", "VO_ALICE@A::-x", "A,B", "A::v1,B::v2", "A B", "A;rm -rf /", "A::$(id)", "A/v1",
    "VO_ALICE@", "@A", "A::", "A\nB", "", "A::v1::v2", "x" * 300,
])
def test_names_that_are_no_package_are_refused(package):
    """An option to the command, a second package hidden behind the joined form's comma, shell syntax, a path:
    none reaches the command."""
    with pytest.raises(PackagesError):
        packages.module_name(package)


def test_command_line_joined_and_separate():
    pk = ["VO_ALICE@O2PDPSuite::v1", "VO_ALICE@O2DPG::v2", "O2PDPSuite::v1"]
    joined = PackagesSettings(("/cvmfs/alice.cern.ch/bin/alienv", "printenv"), "joined")
    assert packages.command_argv(joined, pk) == ["/cvmfs/alice.cern.ch/bin/alienv", "printenv", "O2PDPSuite/v1,O2DPG/v2"]
    separate = PackagesSettings(("modulecmd", "sh", "load"), "separate")
    assert packages.command_argv(separate, pk) == ["modulecmd", "sh", "load", "O2PDPSuite/v1", "O2DPG/v2"]


def test_settings_go_to_the_wrapper_and_back():
    cfg = PilotConfig(packages_command=["modulecmd", "sh", "load"], packages_arguments="separate",
                      packages_timeout=12.5)
    s = PackagesSettings.from_config(cfg)
    assert PackagesSettings.from_dict(s.to_dict()) == s == PackagesSettings(("modulecmd", "sh", "load"), "separate", 12.5)
    # An agent that sent none (older): ALICE's alienv on CVMFS.
    assert PackagesSettings.from_dict({}) == PackagesSettings.from_dict(None) == PackagesSettings()
    assert PackagesSettings().command == ("/cvmfs/alice.cern.ch/bin/alienv", "printenv")
    assert PilotConfig().packages_command == ["/cvmfs/alice.cern.ch/bin/alienv", "printenv"]


def test_env_dump_keeps_values_as_the_shell_left_them():
    dump = (b"PATH=/o2/bin:/usr/bin\0"
            b"QUOTED=it's \"quoted\" with $dollar and `ticks` and \\backslash\0"
            b"MULTI=line1\nline2\n\0"
            b"EQUALS=a=b=c;d\0"
            b"EMPTY=\0"
            b"BASH_FUNC_module%%=() {  eval $(modulecmd bash $*)\n}\0")
    env = packages.parse_env_dump(dump)
    assert env == {
        "PATH": "/o2/bin:/usr/bin",
        "QUOTED": "it's \"quoted\" with $dollar and `ticks` and \\backslash",
        "MULTI": "line1\nline2\n",
        "EQUALS": "a=b=c;d",
        "EMPTY": "",
        "BASH_FUNC_module%%": "() {  eval $(modulecmd bash $*)\n}",
    }


def test_env_dump_bytes_that_are_not_utf8_pass_through_as_os_environ_keeps_them():
    env = packages.parse_env_dump(b"LATIN1=caf\xe9\0")
    assert env["LATIN1"].encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize("dump, why", [
    (b"", "printed no environment"),
    (b"A=1\0B=2", "cut short"),
    (b"A=1\0garbage\0", "'garbage', not NAME=value"),
    (b"=nameless\0", "not NAME=value"),
    (b"A=1\0\0", "not NAME=value"),
    (b"HUGE=" + b"x" * (128 << 10) + b"\0", "HUGE is 131078 bytes long, more than the 131072"),
])
def test_hostile_env_dumps_are_refused_with_a_reason(dump, why):
    with pytest.raises(PackagesError, match=why.replace("(", r"\(")):
        packages.parse_env_dump(dump)


def test_changes_are_what_was_set_and_unset_but_not_the_shells_own():
    before = {"PATH": "/usr/bin", "KEEP": "1", "GONE": "x", "PWD": "/somewhere", "HOME": "/workdir"}
    after = {"PATH": "/o2/bin:/usr/bin", "KEEP": "1", "NEW": "v", "PWD": "/workdir", "SHLVL": "1", "_": "/usr/bin/env",
             "HOME": "/workdir"}
    set_, unset = packages.changes(before, after)
    assert set_ == {"PATH": "/o2/bin:/usr/bin", "NEW": "v"}
    assert unset == {"GONE"}


def test_gridpilots_job_variables_keep_their_values():
    """The order: packages over the base, never over gridpilot's own (HOME, TMPDIR, ALIEN_*, JDL variables)."""
    base = {"PATH": "/usr/bin", "HOME": "/workdir", "TMPDIR": "/workdir/tmp", "ALIEN_PROC_ID": "7", "LANG": "C"}
    got = packages.apply(base, {"PATH": "/o2/bin:/usr/bin", "HOME": "/root", "O2_ROOT": "/o2"},
                         {"TMPDIR", "LANG"}, protected={"HOME", "TMPDIR", "ALIEN_PROC_ID"})
    assert got.env == {"PATH": "/o2/bin:/usr/bin", "HOME": "/workdir", "TMPDIR": "/workdir/tmp", "ALIEN_PROC_ID": "7",
                       "O2_ROOT": "/o2"}
    assert (got.set, got.unset, got.kept) == (["O2_ROOT", "PATH"], ["LANG"], ["HOME", "TMPDIR"])
    assert base["HOME"] == "/workdir" and "LANG" in base  # the base itself is left alone


def test_trace_lines_name_the_packages():
    pk = ["VO_ALICE@O2PDPSuite::v1", "VO_ALICE@O2DPG::v2"]
    assert packages.failure_text(pk, "`alienv printenv O2PDPSuite/v1,O2DPG/v2` exited with 1: ERROR: no O2DPG") == (
        "Cannot set up the packages environment. Error setting the environment for "
        "[VO_ALICE@O2PDPSuite::v1, VO_ALICE@O2DPG::v2]: `alienv printenv O2PDPSuite/v1,O2DPG/v2` exited with 1: "
        "ERROR: no O2DPG")
    got = packages.PackagesEnvironment({}, set=["O2_ROOT", "PATH"], unset=["X"], kept=["HOME"], seconds=0.25)
    assert packages.success_text(pk, got, PackagesSettings()) == (
        "It took 0.25 s to generate the environment for [VO_ALICE@O2PDPSuite::v1, VO_ALICE@O2DPG::v2] "
        "(/cvmfs/alice.cern.ch/bin/alienv printenv): 2 variables set, 1 unset (O2_ROOT, PATH, -X); kept gridpilot's "
        "own HOME, which the packages may not change")


def test_error_text_is_bounded():
    text = packages.bounded("e" * 5000)
    assert len(text) < packages.MAX_ERROR_CHARS + 50 and text.endswith("(4000 more characters)")


def test_the_commands_error_becomes_one_bounded_trace_line():
    err = b"ERROR: Unable to locate a modulefile for 'X/v1'\r\n\n  \x1b[31mred\x1b[0m\tand \xff\n" + b"e" * 5000
    text = packages.one_line(err)
    assert text.startswith("ERROR: Unable to locate a modulefile for 'X/v1' / ?[31mred?[0m and \ufffd / eee")
    assert "\n" not in text and len(text) < packages.MAX_ERROR_CHARS + 50
