"""The typed JobDescription: ALICE defaults and bounds, output specs, inputs, sizes, JDLVariables, unknown keys."""

from __future__ import annotations

import pathlib
from typing import List, Tuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.errors import JdlError
from gridpilot.jdl import (
    GpuRequest,
    InputEntry,
    JobDescription,
    Number,
    OutputSpec,
    String,
    load,
    parse,
    parse_input_entry,
    parse_job,
    parse_output_spec,
    parse_size,
    write,
)
from support import paths

ROOT = paths.ROOT
EXAMPLES = sorted((ROOT / "examples").glob("*.jdl"))
GB = 1 << 30


def job(body: str) -> JobDescription:
    return parse_job('Executable = "/bin/true";\n' + body)


def error_of(body: str) -> JdlError:
    with pytest.raises(JdlError) as info:
        job(body)
    return info.value


def test_defaults_are_the_alice_ones() -> None:
    j = job("")
    assert j.executable == "/bin/true"
    assert (j.ttl, j.cpu_cores, j.price, j.forced_kill_timeout, j.abort_on_core) == (3600, 1, 1.0, 60, True)
    assert j.memory_size == 8 * GB and j.work_directory_size == 10 * GB
    assert j.output_error_e == (OutputSpec("log_archive.zip", ("std*",), {"disk": 1}),)
    assert j.gpu is None and j.requirements is None and j.jdl_variables == {} and j.extra == {}
    assert j.arguments == "" and j.packages == () and j.input_data == ()


def test_memory_and_disk_defaults_scale_with_cores() -> None:
    j = job("CPUCores = 8;")
    assert j.memory_size == 64 * GB and j.work_directory_size == 80 * GB
    j = job('CPUCores = "4"; MemorySize = "6GB";')
    assert j.memory_size == 6 * GB and j.work_directory_size == 40 * GB


def test_numbers_may_be_quoted_or_in_a_one_item_list() -> None:
    a = job('TTL = "7200"; CPUCores = { "2" }; Price = "0.5"; WorkDirectorySize = { "6000MB" };')
    assert (a.ttl, a.cpu_cores, a.price, a.work_directory_size) == (7200, 2, 0.5, 6000 << 20)


@pytest.mark.parametrize(
    "body,field,value",
    [
        ("CPUCores = 1;", "cpu_cores", 1),
        ("CPUCores = 100;", "cpu_cores", 100),
        ("ForcedKillTimeout = 0;", "forced_kill_timeout", 0),
        ("ForcedKillTimeout = 600;", "forced_kill_timeout", 600),
        ("TTL = 1;", "ttl", 1),
        ("Price = 2.5;", "price", 2.5),
        ("AbortOnCore = false;", "abort_on_core", False),
        ('AbortOnCore = "False";', "abort_on_core", False),
        ('AbortOnCore = "yes";', "abort_on_core", True),
        ("AbortOnCore = 0;", "abort_on_core", False),
        ('ValidationCommand = "/x/validation.sh";', "validation_command", "/x/validation.sh"),
        ('OutputDir = "/alice/out";', "output_dir", "/alice/out"),
        ('User = "aliprod";', "user", "aliprod"),
        ('Arguments = 100;', "arguments", "100"),
        ('Packages = "VO_ALICE@ROOT::v6";', "packages", ("VO_ALICE@ROOT::v6",)),
        ('InputDataList = "wn.xml"; InputDataListFormat = "xml-single";', "input_data_list", "wn.xml"),
    ],
)
def test_accepted_values(body: str, field: str, value: object) -> None:
    assert getattr(job(body), field) == value


@pytest.mark.parametrize(
    "body,message",
    [
        ("CPUCores = 0;", "CPUCores must be between 1 and 100, got 0"),
        ("CPUCores = 101;", "CPUCores must be between 1 and 100, got 101"),
        ('CPUCores = "many";', "CPUCores must be a whole number, got 'many'"),
        ("CPUCores = 2.5;", "CPUCores must be a whole number, got '2.5'"),
        ("ForcedKillTimeout = 601;", "ForcedKillTimeout must be between 0 and 600 seconds, got 601"),
        ("ForcedKillTimeout = -1;", "between 0 and 600"),
        ("TTL = 0;", "TTL must be a positive whole number of seconds, got 0"),
        ('TTL = "1h";', "TTL must be a whole number of seconds"),
        ("TTL = { 1, 2 };", "TTL must be a whole number of seconds, got a list of 2 items"),
        ("Price = 0;", "Price must be more than zero"),
        ('Price = "cheap";', "Price must be a number"),
        ('Price = "2\x1f";', "Price must be a number"),  # \x1f: whitespace to re's \s, not to float()
        ('TTL = "5\x1c";', "TTL must be a whole number of seconds"),
        ('MemorySize = "8\x1dGB";', "is not a size"),
        ("Price = 1e999;", "Price must be more than zero"),
        ('AbortOnCore = "maybe";', "AbortOnCore must be true or false"),
        ("MemorySize = 8000;", "MemorySize needs a unit"),
        ('MemorySize = "8000";', "is not a size"),
        ('MemorySize = "0GB";', "MemorySize must be more than zero"),
        ('WorkDirectorySize = "lots";', "WorkDirectorySize 'lots' is not a size"),
        ("Packages = { 1 };", "Packages must be a string or a list of strings"),
        ("GPU = -1;", "GPU must be at least 0"),
        ('GPU = "";', "GPU must be a number of GPUs or a vendor"),
        ("Requirements = { \"a\" };", "Requirements must be a boolean expression"),
        ('Requirements = "other.TTL >";', "in the Requirements string: expected a value or expression"),
        ('InputData = { "LF:/a,download" };', "unknown option 'download' in InputData entry"),
        ('InputFile = { "LF:" };', "expected a file path in InputFile entry"),
        ('OutputArchive = { "AO2D.root@disk=2" };', "expected an archive name and ':'"),
        ('OutputFile = { "out.zip:a@disk=1,noarchive" };', "'noarchive' is for single files, and 'out.zip' is an"),
        ('Output = { "a.root@disk=1", "logs:std*", "a.root@disk=2" };', "output 'a.root' is named twice: here in"),
        ('Output = "logs:std*@disk=1"; OutputArchive = { "logs:*.log" };', "output 'logs' is named twice: here in"),
        ('Output = { 1 };', "Output must be a string or a list of strings"),
        ('Output = { "a@CERN" };', "'CERN' is neither a count such as disk=2 nor a storage element"),
        ('JDLVariables = { "Nope" };', "JDLVariables names 'Nope', which this JDL does not set"),
        ('JDLVariables = { "not a key" };', "is not a key name"),
        ("ValidationCommand = true;", "ValidationCommand must be a string, got a boolean"),
        ('OutputDir = "  ";', "OutputDir must not be empty"),
    ],
)
def test_rejected_values(body: str, message: str) -> None:
    e = error_of(body)
    assert message in e.message, e.message
    assert e.line >= 1 and e.column >= 1


def test_error_points_at_the_value() -> None:
    e = error_of("TTL = 1;\nCPUCores =\n    500;")
    assert (e.line, e.column) == (4, 5)
    e = error_of('OutputFile = {\n  "a@disk=1",\n  "b@nowhere"\n};')
    assert (e.line, e.column) == (4, 3) and "'nowhere'" in e.message


def test_nul_in_exported_variable_is_refused() -> None:
    # The lexer keeps any character but a newline inside a string; the environment cannot hold a NUL.
    e = error_of('JDLVariables = { "X" }; X = "a\x00b";')
    assert "NUL" in e.message


def test_missing_or_empty_executable() -> None:
    with pytest.raises(JdlError, match="missing required key 'Executable'"):
        parse_job('TTL = 5;')
    with pytest.raises(JdlError, match="missing required key 'Executable'") as info:
        parse_job("")
    assert (info.value.line, info.value.column) == (1, 1)
    with pytest.raises(JdlError, match="Executable must not be empty"):
        parse_job('Executable = "";')


@pytest.mark.parametrize(
    "text,size",
    [
        ("8GB", 8 * GB),
        ("8G", 8 * GB),
        ("8gb", 8 * GB),
        ("8 GiB", 8 * GB),
        ("512MB", 512 << 20),
        ("100K", 100 << 10),
        ("1.5T", 3 << 39),
        ("12000MB", 12000 << 20),
        (" 2 G ", 2 * GB),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["8", "8X", "GB", "-1GB", "1e3GB", "8 G B", ""])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(JdlError):
        parse_size(text)


@pytest.mark.parametrize(
    "text,spec",
    [
        ("AO2D.root", OutputSpec(None, ("AO2D.root",))),
        ("AO2D.root@disk=2", OutputSpec(None, ("AO2D.root",), {"disk": 2})),
        (
            "archive.zip:f1,f2@disk=2,*ALICE::GSI::SE2",
            OutputSpec("archive.zip", ("f1", "f2"), {"disk": 2}, async_ses=("ALICE::GSI::SE2",)),
        ),
        (
            "log_archive.zip:std*,*.log@disk=1,tape=1",
            OutputSpec("log_archive.zip", ("std*", "*.log"), {"disk": 1, "tape": 1}),
        ),
        (
            "out.root@ALICE::CERN::EOS,!ALICE::Bad::SE, Disk = 1",
            OutputSpec(None, ("out.root",), {"disk": 1}, ses=("ALICE::CERN::EOS",), excluded_ses=("ALICE::Bad::SE",)),
        ),
        ("a.zip: x , y ", OutputSpec("a.zip", ("x", "y"))),
        # What ALICE's own JDLs write (tests/fixtures/jdl/alice):
        ("log_archive:*.log@disk=1", OutputSpec("log_archive", ("*.log",), {"disk": 1})),  # no .zip
        ("root_archive.zip:AliESDfriends_v1.root,@disk=1",  # a trailing comma before @
         OutputSpec("root_archive.zip", ("AliESDfriends_v1.root",), {"disk": 1})),
        ("Ntuple.LUT.root@Alice::CERN::se,noarchive",  # AliEn's pre-2.18 flag
         OutputSpec(None, ("Ntuple.LUT.root",), ses=("Alice::CERN::se",), noarchive=True)),
        ("a.root@disk=1,NO_ARCHIVE", OutputSpec(None, ("a.root",), {"disk": 1}, noarchive=True)),
        ("a,,b", OutputSpec(None, ("a", "b"))),  # JAliEn skips blank names
        ("a@", OutputSpec(None, ("a",))),
        ("a@disk=2,", OutputSpec(None, ("a",), {"disk": 2})),
        ("a@,disk=2", OutputSpec(None, ("a",), {"disk": 2})),
    ],
)
def test_output_specs(text: str, spec: OutputSpec) -> None:
    parsed = parse_output_spec(text)
    assert parsed == spec
    assert parse_output_spec(parsed.to_text()) == parsed


def test_output_key_is_the_outputs_list() -> None:
    # The key current ALICE JDLs use (AliAnalysisAlien, AliDPG, O2DPG's grid_submit.sh), files and archives mixed.
    # It used to land in `extra`, so the job uploaded nothing and still ended DONE.
    j = job('Output = {\n  "log_archive:*.log,stdout,stderr@disk=1",\n  "AO2D.root@disk=2"\n};\n'
            'OutputFile = { "extra.root" }; OutputArchive = { "qa.zip:QA*.root@disk=1" };')
    assert j.output == (
        OutputSpec("log_archive", ("*.log", "stdout", "stderr"), {"disk": 1}),
        OutputSpec(None, ("AO2D.root",), {"disk": 2}),
    )
    assert j.outputs == j.output + (OutputSpec(None, ("extra.root",)), OutputSpec("qa.zip", ("QA*.root",), {"disk": 1}))
    assert "Output" not in j.extra and "output" not in {k.lower() for k in j.extra}
    assert [o["archive"] for o in j.to_dict()["output"]] == ["log_archive", None]
    assert job('output = "x.root";').output == (OutputSpec(None, ("x.root",)),)  # any case, a lone string
    assert job("").outputs == ()


def test_an_output_named_twice_is_placed_at_its_second_naming() -> None:
    e = error_of('Output = {\n  "AO2D.root@disk=1"\n};\nOutputFile = {\n  "x.root",\n  "AO2D.root@disk=2"\n};')
    assert (e.line, e.column) == (7, 3)
    assert "output 'AO2D.root' is named twice: here in OutputFile and in Output at line 3, column 3" in e.message
    # Patterns may overlap: what they match is only known in the work directory.
    assert len(job('Output = { "*.root@disk=1", "a*.root@disk=2" };').output) == 2


def test_replica_counts() -> None:
    assert parse_output_spec("a").replicas == 2  # ALICE's default: two disk replicas
    assert parse_output_spec("a@disk=1").replicas == 1
    assert parse_output_spec("a@disk=2,tape=1").replicas == 3
    assert parse_output_spec("a@ALICE::CERN::EOS").replicas == 1
    assert parse_output_spec("a@disk=2,*ALICE::GSI::SE2").replicas == 3
    assert parse_output_spec("a@!ALICE::Bad::SE").replicas == 2


@pytest.mark.parametrize(
    "text,message",
    [
        (":a", "empty archive name"),
        ("a.zip:", "expected a file name or pattern after 'a.zip':"),
        ("a.zip: , @disk=1", "expected a file name or pattern after 'a.zip':"),
        (",", "expected a file name or pattern"),
        ("@disk=1", "expected a file name or pattern"),
        ("logs:std*@no_archive", "'no_archive' is for single files, and 'logs' is an archive"),
        ("a@disk=two", "should be a tag and a count"),
        ("a@disk=1,disk=2", "'disk' given twice"),
        ("a@CERN", "neither a count such as disk=2 nor a storage element"),
        ("dir/a.zip:x", "must be a plain file name"),
    ],
)
def test_bad_output_specs(text: str, message: str) -> None:
    with pytest.raises(JdlError) as info:
        parse_output_spec(text, line=3, column=7)
    assert message in info.value.message and (info.value.line, info.value.column) == (3, 7)


def test_input_entries() -> None:
    assert parse_input_entry("LF:/alice/data/x.root") == InputEntry("/alice/data/x.root")
    assert parse_input_entry("LF:/alice/data/x.root,nodownload") == InputEntry("/alice/data/x.root", True, True)
    assert parse_input_entry("local.C") == InputEntry("local.C", catalogue=False)
    j = job('InputData = { "LF:/a/1.root", "LF:/a/2.root,nodownload" }; InputFile = "LF:/a/sim.C";')
    assert [e.nodownload for e in j.input_data] == [False, True]
    assert j.input_file == (InputEntry("/a/sim.C"),)


def test_gpu_forms() -> None:
    assert job("GPU = 2;").gpu == GpuRequest(2)
    assert job('GPU = "1";').gpu == GpuRequest(1)
    assert job("GPU = 0;").gpu is None
    assert job("GPU = true;").gpu == GpuRequest(1)
    assert job('GPU = "Radeon Instinct MI50 32GB";').gpu == GpuRequest(1, "Radeon Instinct MI50 32GB")
    assert job('GPU = "NVIDIA";').gpu == GpuRequest(1, "NVIDIA")


def test_jdl_variables_are_exported_with_lists_joined() -> None:
    j = job(
        'JDLVariables = { "LPMRunNumber", "Wagons", "IsMC", "Cores", "Requirements" };\n'
        'LPMRunNumber = "529691"; Wagons = { "a", "b", "c" }; IsMC = true; Cores = 8;\n'
        "Requirements = other.TTL > 5;"
    )
    assert j.jdl_variables == {
        "ALIEN_JDL_LPMRUNNUMBER": "529691",
        "ALIEN_JDL_WAGONS": "a##b##c",
        "ALIEN_JDL_ISMC": "true",
        "ALIEN_JDL_CORES": "8",
        "ALIEN_JDL_REQUIREMENTS": "other.TTL > 5",
    }


def test_unknown_keys_are_kept_and_written_back() -> None:
    text = 'Executable = "/bin/true";\nJobTag = { "comment:x" };\nSplit = "se";\nsplitMaxInputFileNumber = 20;\n'
    j = parse_job(text)
    assert j.extra == {
        "JobTag": parse(text).get("JobTag"),
        "Split": String("se"),
        "splitMaxInputFileNumber": Number("20"),
    }
    assert j.to_dict()["extra"] == {"JobTag": ["comment:x"], "Split": "se", "splitMaxInputFileNumber": 20}
    written = write(j.document)
    assert "splitMaxInputFileNumber = 20;" in written and parse_job(written) == j


def test_requirements_as_expression_string_or_boolean() -> None:
    site = {"TTL": 90000, "CloseSE": ["ALICE::CERN::EOS"]}
    assert job('Requirements = other.TTL > 72000 && member(other.CloseSE, "ALICE::CERN::EOS");').matches(site)
    assert job('Requirements = "other.TTL > 72000";').matches(site)
    assert not job("Requirements = other.TTL > 100000;").matches(site)
    assert not job("Requirements = false;").matches(site)
    assert job("").matches({})


def test_requirements_string_error_is_placed_inside_the_string() -> None:
    e = error_of('Requirements = "other.TTL > 5 &&";')
    assert e.line == 2 and e.column == len('Requirements = "other.TTL > 5 &&') + 1


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_a_valid_job_and_serialises(path: pathlib.Path) -> None:
    j = load(path)
    data = orjson.loads(orjson.dumps(j.to_dict()))
    assert data["executable"] == j.executable
    assert parse_job(write(j.document)) == j


def test_examples_cover_the_issue() -> None:
    jobs = {p.name: load(p) for p in EXAMPLES}
    assert any(j.gpu is not None and j.gpu.name for j in jobs.values())
    assert any(j.cpu_cores >= 8 for j in jobs.values())
    assert any(j.validation_command and any("OCDB" in e.path for e in j.input_file) for j in jobs.values())
    assert any(len(j.jdl_variables) >= 4 for j in jobs.values())
    outputs = [s for j in jobs.values() for s in j.outputs]
    assert any(s.replicas >= 2 and (s.ses or s.async_ses) for s in outputs)
    assert any(e.nodownload for j in jobs.values() for e in j.input_data + j.input_data_collection)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_gives_a_job_or_a_jdl_error(body: str) -> None:
    for text in (body, 'Executable = "/bin/true";\n' + body):
        try:
            parse_job(text)
        except JdlError:
            pass


_FIELD_KEYS = st.sampled_from(
    ["TTL", "CPUCores", "MemorySize", "WorkDirectorySize", "Price", "ForcedKillTimeout", "AbortOnCore", "GPU",
     "Output", "OutputFile", "OutputArchive", "OutputErrorE", "InputData", "InputFile", "Requirements", "JDLVariables",
     "Packages", "Arguments", "User"]
)
_FIELD_VALUES = st.one_of(
    st.integers(-5, 700).map(str),
    st.sampled_from(['"8GB"', '"12 MB"', "true", "false", '"x.zip:a,b@disk=2"', '"logs:a,@disk=1,"', '"b@noarchive"', '"LF:/a,nodownload"', "{}",
                     '{ "TTL" }', '"other.TTL > 5"', "other.TTL > 5", '{ "a@disk=1", "b" }', "1.5", '"NVIDIA"']),
    st.text(max_size=12).map(lambda s: '"' + s.replace("\\", "").replace('"', "").replace("\n", "") + '"'),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FIELD_KEYS, _FIELD_VALUES), max_size=6, unique_by=lambda kv: kv[0]))
def test_typed_keys_with_random_values_give_a_job_or_a_jdl_error(pairs: List[Tuple[str, str]]) -> None:
    text = 'Executable = "/bin/true";\n' + "".join(f"{k} = {v};\n" for k, v in pairs)
    try:
        parse_job(text)
    except JdlError as e:
        assert e.line >= 1 and e.column >= 1
