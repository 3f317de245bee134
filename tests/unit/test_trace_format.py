"""ALICE's trace format without processes: the rendered line (gridpilot/tracefmt.py), the `proc` line
(pilot/monitor.py), the JobAgent's and JobWrapper's sentences (pilot/jobtrace.py), JAliEn's size format
(storage/transfers.py), and the template matcher test_alice_trace relies on (tests/support/trace_template.py)."""

from __future__ import annotations

import random

import calendar
import datetime
import os
import platform
import re
import sys
from types import SimpleNamespace

import pytest
from support.paths import FIXTURES
from support.trace_template import GENERIC, TemplateLine, literal, load, mismatch

import gridpilot
from gridpilot import tracefmt
from gridpilot.jdl import parse_job
from gridpilot.pilot import jobtrace
from gridpilot.pilot.monitor import PROC_COLUMNS, PROCFMT, format_proc_line, parse_proc_line
from gridpilot.storage.transfers import format_size

MB = 1 << 20
# 2022-09-23 12:40:03 UTC, the first line of the issue's sample trace.
SAMPLE_TS = calendar.timegm((2022, 9, 23, 12, 40, 3))


# -- the rendered line ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("category, text, line", [
    ("state", "Job ASSIGNED to: ALICE::CERN::Yerevan", "Sep 23 12:40:03 [state ]: Job ASSIGNED to: ALICE::CERN::Yerevan"),
    ("trace", "Starting JobWrapper", "Sep 23 12:40:03 [trace ]: Starting JobWrapper"),
    ("procfmt", PROCFMT, "Sep 23 12:40:03 [procfmt ]: FRUNTIME | RUNTIME | CPUUSAGE | MEMUSAGE | CPUTIME | RMEM | VMEM | "
                         "NOCPUS | CPUFAMILY | CPUMHZ | RESOURCEUSAGE | RMEMMAX | VMEMMAX"),
    ("proc", "00:00:08 8 4.00 0.00 0.32 30.48 30.48 64 6 2339 0.75 30.48 30.48 1000",
     "Sep 23 12:40:03 [proc ]: 00:00:08 8 4.00 0.00 0.32 30.48 30.48 64 6 2339 0.75 30.48 30.48 1000"),
])
def test_a_record_renders_as_the_issues_sample_in_utc(category, text, line):
    assert tracefmt.render({"ts": SAMPLE_TS + 0.75, "category": category, "text": text}, utc=True) == line


def test_the_day_is_two_digits_and_the_month_english_whatever_the_locale():
    jan = calendar.timegm((2026, 1, 5, 7, 8, 9))
    assert tracefmt.timestamp(jan, utc=True) == "Jan 05 07:08:09"
    assert [tracefmt.timestamp(calendar.timegm((2026, m, 1, 0, 0, 0)), utc=True)[:3] for m in range(1, 13)] == \
        list(tracefmt.MONTHS)


def test_local_time_is_the_default():
    ts = SAMPLE_TS + 3600 * 5
    local = datetime.datetime.fromtimestamp(ts)
    assert tracefmt.timestamp(ts) == f"{tracefmt.MONTHS[local.month - 1]} {local.day:02d} {local:%H:%M:%S}"


def test_a_text_of_several_lines_keeps_them_under_its_first():
    out = tracefmt.render({"ts": SAMPLE_TS, "category": "trace", "text": "first\nsecond\r\nthird"}, utc=True)
    assert out.splitlines() == ["Sep 23 12:40:03 [trace ]: first", "    second", "    third"]


@pytest.mark.parametrize("text, state", [
    ("Job state transition from ASSIGNED to STARTED", "STARTED"),
    ("Job state transition from SAVING to DONE_WARN", "DONE_WARN"),
    ("Job ASSIGNED to: ALICE::CERN::Yerevan", "ASSIGNED"),
    ("WAITING: submitted by alice from hello.jdl", "WAITING"),
    ("WAITING: resubmitted (1 of 3) because it ended ERROR_IB before reaching RUNNING", "WAITING"),
    ("not resubmitted: it ended ERROR_IB before reaching RUNNING, but its kill was requested", None),
    ("Job state transition from RUNNING", None),
])
def test_the_state_a_state_line_sets(text, state):
    assert tracefmt.state_of(text) == state
    if state is not None and text.startswith("Job state"):
        old, new = re.findall(r"[A-Z_]{4,}", text)
        assert tracefmt.transition(old, new) == text


# -- the proc line --------------------------------------------------------------------------------------------------
def test_the_proc_line_has_jaliens_fourteen_values_and_units():
    line = format_proc_line(wall_s=3725.9, cpu_s=1862.95, rss_bytes=512 * MB, vmem_bytes=1536 * MB,
                            node_memory_bytes=16384 * MB, cores=8, cpu_family="6", cpu_mhz=2399.6,
                            rss_max_bytes=768 * MB, vmem_max_bytes=2048 * MB)
    assert line == "01:02:05 3725 50.00 3.12 1862.95 512.00 1536.00 8 6 2400 4470.33 768.00 2048.00 1000"
    values = parse_proc_line(line)
    assert list(values) == list(PROC_COLUMNS) and len(PROC_COLUMNS) == 14
    assert PROC_COLUMNS[:13] == tuple(PROCFMT.split(" | ")) and values["KSI2K"] == "1000"
    assert values["RMEM"] == "512.00" and values["CPUMHZ"] == "2400" and values["FRUNTIME"] == "01:02:05"


def test_a_cpu_family_with_spaces_cannot_shift_the_columns():
    line = format_proc_line(wall_s=1, cpu_s=0, rss_bytes=0, vmem_bytes=0, node_memory_bytes=MB, cores=1,
                            cpu_family="AMD EPYC", cpu_mhz=0, rss_max_bytes=0, vmem_max_bytes=0)
    assert parse_proc_line(line)["CPUFAMILY"] == "AMDEPYC"
    unknown = format_proc_line(wall_s=1, cpu_s=0, rss_bytes=0, vmem_bytes=0, node_memory_bytes=MB, cores=1,
                               cpu_family="", cpu_mhz=0, rss_max_bytes=0, vmem_max_bytes=0)
    assert parse_proc_line(unknown)["CPUFAMILY"] == "unknown"


def test_a_line_of_the_old_form_is_not_read_as_a_proc_line():
    with pytest.raises(ValueError, match="14 space-separated values, got"):
        parse_proc_line("00:00:08 | 8 | 4.00 | 0.00 | 0.32 | 30.48 | 30.48 | 64 | 6 | 2339 | 0.75 | 30.48 | 30.48")


# -- the pilot's sentences ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, line, back", [
    ("htcondor:ce510.cern.ch#22591372.0#1663929146", 'BatchId GlobalJobId = "ce510.cern.ch#22591372.0#1663929146"',
     "htcondor:ce510.cern.ch#22591372.0#1663929146"),
    ("slurm:4242", 'BatchId SLURM_JOB_ID = "4242"', "slurm:4242"),
    ("local:777.3", 'BatchId GRIDPILOT_BATCH_ID = "local:777.3"', "local:777.3"),
    (None, "BatchId none", None),
])
def test_the_batch_id_line_names_the_variable_jalien_reads(batch, line, back):
    assert jobtrace.batch_id(batch) == line
    assert jobtrace.batch_id_of(line) == back


def test_the_pilot_traces_its_own_name_and_version():
    assert jobtrace.running("wn42.example.org") == f"Running gridpilot JobAgent/{gridpilot.__version__} on wn42.example.org"


def test_the_pilot_traces_the_installation_it_runs_from():
    # The real path of its environment: a pilot started through a tree's `latest` names the version it resolved to.
    line = jobtrace.installation()
    assert line.startswith(f"Pilot installation: gridpilot {gridpilot.__version__} at {os.path.realpath(sys.prefix)} ")
    assert line.endswith(f"(CPython {platform.python_version()}, {platform.machine()})")


def test_the_limit_lines_say_whether_the_memory_limit_is_the_jdls():
    written = parse_job('Executable = "/bin/true";\nCPUCores = 2;\nMemorySize = "3GB";\nWorkDirectorySize = "5000MB";\n')
    assert jobtrace.limits(written) == ["Job requested 2 CPU cores to run", "Local disk space limit: 5000MB",
                                        "Virtual memory limit (JDL): 3072MB"]
    default = parse_job('Executable = "/bin/true";\n')
    assert jobtrace.limits(default)[2] == f"Virtual memory limit (default): {default.memory_size // MB}MB"


def test_the_os_is_read_from_os_release_where_the_wrapper_runs(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text('NAME="Rocky Linux"\nVERSION="8.6 (Green Obsidian)"\n'
                                                 'PRETTY_NAME="Rocky Linux 8.6 (Green Obsidian)"\n')
    assert jobtrace.os_detected(str(tmp_path)) == 'The following OS has been detected: "Rocky Linux 8.6 (Green Obsidian)"'
    (tmp_path / "etc" / "os-release").unlink()
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "os-release").write_text("# no pretty name\nNAME=Alpine\nVERSION=3.19\n")
    assert jobtrace.os_release(str(tmp_path)) == "Alpine 3.19"
    assert jobtrace.os_detected(str(tmp_path / "nothing")) == 'The following OS has been detected: "unknown"'


def test_time_spent_from_the_payloads_rusage():
    line = jobtrace.time_spent(12.345, {"utime_s": 10.5, "stime_s": 0.25, "maxrss_kb": 20972})
    assert line == "Execution completed. Time spent: 12.35 s elapsed, 10.50 s user, 0.25 s system, 20972 KB maximum resident"
    assert jobtrace.time_spent(1.0, {}) == "Execution completed. Time spent: 1.00 s elapsed"


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.000 KB"), (6057, "5.915 KB"),
                                        (3 * MB // 2, "1.500 MB"), (5 << 30, "5.000 GB"), (1 << 60, "1024.000 PB")])
def test_sizes_as_jalien_writes_them(size, text):
    assert format_size(size) == text


# -- the template matcher -------------------------------------------------------------------------------------------
def _t(*lines: str) -> list:
    out = []
    for n, raw in enumerate(lines, 1):
        kind = {"? ": "optional", "* ": "any"}.get(raw[:2], "one")
        text = raw[2:] if kind != "one" else raw
        out.append(TemplateLine(n, text, re.compile(text), kind))
    return out


def test_the_matcher_holds_order_and_completeness():
    template = _t("a", "? b", "* c", "d")
    assert mismatch(template, ["a", "b", "c", "c", "d"]) is None
    assert mismatch(template, ["a", "d"]) is None
    assert "expected d" in mismatch(template, ["a", "x", "d"])
    assert "expected a" in mismatch(template, ["d", "a"])
    assert "(end of the trace)" in mismatch(template, ["a"])
    assert "goes on after" in mismatch(template, ["a", "d", "d"])


def test_the_template_fails_a_trace_in_gridpilots_old_format():
    values = literal({k: "x" for k in ("USER", "SITE", "CE", "NODE", "AGENT", "VERSION", "WORKDIR", "INPUT_LFN",
                                       "OUTPUT_DIR", "OS", "SE", "SIZE")})
    values.update(SANDBOX_NOTE=".*", NOPIDNS=".*")
    template = load(FIXTURES / "traces" / "alice_job.template", values)
    assert set(GENERIC) <= {"TIME", "HMS", "INT", "NUM", "WORD", "JSON", "PFN"}
    old = ["2026-12-05 00:23:51  state   WAITING: submitted by x", "2026-12-05 00:23:52  state   ASSIGNED to agent x"]
    assert "template line" in (mismatch(template, old) or "")
    proc = next(t for t in template if "[proc ]" in t.text)
    assert proc.pattern.fullmatch("Sep 23 12:40:17 [proc ]: 00:00:08 8 4.00 0.00 0.32 30.48 30.48 1 6 2339 0.75 "
                                  "30.48 30.48 1000")
    assert not proc.pattern.fullmatch("Sep 23 12:40:17 [proc ]: 00:00:08 | 8 | 4.00 | 0.00 | 0.32 | 30.48 | 30.48 | "
                                      "1 | 6 | 2339 | 0.75 | 30.48 | 30.48")


def test_limits_of_a_job_without_a_jdl_document_are_defaults():
    # jobtrace.limits reads the JDL's own keys through the document: a job built any other way has defaults only.
    bare = SimpleNamespace(cpu_cores=1, work_directory_size=10 << 30, memory_size=8 << 30)
    assert jobtrace.limits(bare)[2] == "Virtual memory limit (default): 8192MB"


def test_render_all_is_render_of_each_line():
    # Seconds shared by several lines, a fraction just below the next second, a line of several lines of text.
    base = 1_790_000_000.0
    entries = [{"ts": base + d, "category": c, "text": t} for d, c, t in [
        (0.0, "state", "Job state transition from WAITING to ASSIGNED"), (0.25, "trace", "a"),
        (0.999999, "proc", "b\nc"), (1.0, "usage", ""), (86_400.5, "trace", "<script>")]]
    # Minute, hour, day, month and year boundaries (the UTC path formats once per minute), and times all over.
    for edge in (59.999, 60.0, 3599.5, 3600.0, 86_399.9, 86_400.0, 31 * 86_400 - 0.001, 31 * 86_400.0):
        entries.append({"ts": 1_798_761_600.0 - 31 * 86_400 + edge, "category": "trace", "text": "edge"})
    rng = random.Random(23)
    entries += [{"ts": base + rng.uniform(0, 3 * 365 * 86_400), "category": "trace", "text": "t"} for _ in range(500)]
    for utc in (True, False):
        assert tracefmt.render_all(entries, utc=utc) == [tracefmt.render(e, utc=utc) for e in entries]
