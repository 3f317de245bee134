"""The typed job description: a JdlDocument checked against the ALICE keys, with their defaults and bounds.

Numbers may be written bare or quoted (`TTL = 3600;` and `TTL = "3600";` are the same, as ALICE writes both),
and a one-item list stands for its item (`WorkDirectorySize = { "10GB" };`). Keys the model does not know are
kept in `extra` and stay in `document`, so writing the document back loses nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from gridpilot.errors import JdlError
from gridpilot.jdl import datalist, gpus
from gridpilot.jdl.filespecs import (
    DEFAULT_ERROR_OUTPUT,
    InputEntry,
    OutputSpec,
    parse_input_entry,
    parse_output_spec,
    parse_size,
)
from gridpilot.jdl.nodes import Boolean, Expr, Expression, JdlDocument, ListValue, Number, String, Value
from gridpilot.jdl.parser import parse_expression
from gridpilot.jdl.platform import (DEFAULT_ARCH, Platform, arch_from_packages, parse_arch, parse_cpu_level,
                                    parse_platform)
from gridpilot.pilotversion import check_version
from gridpilot.jdl.requirements import SiteMap, evaluate
from gridpilot.jdl.writer import write_expression, write_value

DEFAULT_TTL = 3600
DEFAULT_CPU_CORES = 1
MAX_CPU_CORES = 100
DEFAULT_MEMORY_PER_CORE = 8 << 30
DEFAULT_WORKDIR_PER_CORE = 10 << 30
DEFAULT_PRICE = 1.0
DEFAULT_FORCED_KILL_TIMEOUT = 60
MAX_FORCED_KILL_TIMEOUT = 600

#: Prefix of the environment variables that carry the JDLVariables to the payload.
JDL_VARIABLE_PREFIX = "ALIEN_JDL_"
#: How a list value is joined into one environment variable.
JDL_LIST_SEPARATOR = "##"

_KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# ASCII: \s would take U+001C-U+001F and \d other scripts' digits, which int() and float() refuse or read otherwise.
_INT_TEXT = re.compile(r"^\s*[+-]?\d{1,18}\s*$", re.ASCII)
_FLOAT_TEXT = re.compile(r"^\s*[+-]?\d{1,18}(\.\d{1,18})?([eE][+-]?\d{1,3})?\s*$", re.ASCII)


@dataclass(frozen=True)
class GpuRequest:
    """GPUs a job asks for: a count, and the terms each of them must answer to (jdl/gpus.py, docs/gpus.md): `name`
    a substring of the GPU's vendor and model (GPU = "MI50"), `model` one of the model's names whole
    (GPU = "=Radeon Instinct MI50 32GB"), `vendor` (GPUVendor), `arch` (GPUArch)."""

    count: int = 1
    name: Optional[str] = None
    model: Optional[str] = None
    vendor: Optional[str] = None
    arch: Optional[str] = None

    def to_dict(self) -> Dict[str, object]:
        return {"count": self.count, "name": self.name, "model": self.model, "vendor": self.vendor,
                "arch": self.arch}


@dataclass(frozen=True)
class JobDescription:
    """One job as the pilot and the broker see it. Sizes are in bytes, times in seconds."""

    executable: str
    arguments: str = ""
    packages: Tuple[str, ...] = ()
    input_file: Tuple[InputEntry, ...] = ()
    input_data: Tuple[InputEntry, ...] = ()
    input_data_collection: Tuple[InputEntry, ...] = ()
    input_data_list: Optional[str] = None
    input_data_list_format: Optional[str] = None
    #: `Output`: files and archives in one list, the key current ALICE JDLs use (AliEn 2.18 folded OutputFile and
    #: OutputArchive into it; both still work and add to it).
    output: Tuple[OutputSpec, ...] = ()
    output_file: Tuple[OutputSpec, ...] = ()
    output_archive: Tuple[OutputSpec, ...] = ()
    output_error_e: Tuple[OutputSpec, ...] = (parse_output_spec(DEFAULT_ERROR_OUTPUT),)
    output_dir: Optional[str] = None
    validation_command: Optional[str] = None
    ttl: int = DEFAULT_TTL
    cpu_cores: int = DEFAULT_CPU_CORES
    memory_size: int = DEFAULT_MEMORY_PER_CORE
    work_directory_size: int = DEFAULT_WORKDIR_PER_CORE
    price: float = DEFAULT_PRICE
    forced_kill_timeout: int = DEFAULT_FORCED_KILL_TIMEOUT
    abort_on_core: bool = True
    gpu: Optional[GpuRequest] = None
    #: The OS release (and architecture) the payload was built for ("el9", "el9-x86_64"): chooses the container
    #: image. None: none written (jdl.platform.platform_from_packages may still tell it from Packages).
    platform: Optional[Platform] = None
    #: `Arch` as written ("aarch64"; None: not written). The broker reads `needed_arch`.
    arch: Optional[str] = None
    #: `CPULevel`: the x86-64 psABI level the payload was built for, 1..4 (x86-64-v3 is 3); 0: none asked.
    cpu_level: int = 0
    #: `RequireContainer`: the job runs only on a node where a container runtime starts a container.
    require_container: bool = False
    #: `MinPilotVersion`: the oldest pilot (PEP 440) that may run the job.
    min_pilot_version: Optional[str] = None
    #: Environment for the payload: ALIEN_JDL_<NAME> -> value, for each name listed in JDLVariables.
    jdl_variables: Mapping[str, str] = field(default_factory=dict)
    user: Optional[str] = None
    requirements: Optional[Expr] = None
    #: Keys the model does not know, spelled as written, with their values.
    extra: Mapping[str, Value] = field(default_factory=dict)
    #: The document this was built from (what `write` writes back).
    document: JdlDocument = field(default_factory=JdlDocument, compare=False, repr=False)

    @classmethod
    def from_document(cls, doc: JdlDocument) -> JobDescription:
        """Check `doc` against the known keys, defaults and bounds. Raises JdlError at the offending value."""
        return _build(doc)

    @property
    def outputs(self) -> Tuple[OutputSpec, ...]:
        """What a job that ends well uploads: Output, OutputFile and OutputArchive, in that order."""
        return self.output + self.output_file + self.output_archive

    @property
    def needed_arch(self) -> str:
        """The architecture the job runs on: Arch, else Platform's, else the one its Packages' tags name, else
        x86_64 (docs/broker.md, "Architecture and CPU")."""
        if self.arch is not None:
            return self.arch
        if self.platform is not None and self.platform.arch is not None:
            return self.platform.arch
        return arch_from_packages(self.packages) or DEFAULT_ARCH

    def matches(self, site: SiteMap) -> bool:
        """Whether this job's Requirements hold on `site` (True when there are none)."""
        return self.requirements is None or evaluate(self.requirements, site)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for JSON (the `gridpilot jdl show` output)."""
        return {
            "executable": self.executable,
            "arguments": self.arguments,
            "packages": list(self.packages),
            "input_file": [e.to_dict() for e in self.input_file],
            "input_data": [e.to_dict() for e in self.input_data],
            "input_data_collection": [e.to_dict() for e in self.input_data_collection],
            "input_data_list": self.input_data_list,
            "input_data_list_format": self.input_data_list_format,
            "output": [o.to_dict() for o in self.output],
            "output_file": [o.to_dict() for o in self.output_file],
            "output_archive": [o.to_dict() for o in self.output_archive],
            "output_error_e": [o.to_dict() for o in self.output_error_e],
            "output_dir": self.output_dir,
            "validation_command": self.validation_command,
            "ttl": self.ttl,
            "cpu_cores": self.cpu_cores,
            "memory_size": self.memory_size,
            "work_directory_size": self.work_directory_size,
            "price": self.price,
            "forced_kill_timeout": self.forced_kill_timeout,
            "abort_on_core": self.abort_on_core,
            "gpu": None if self.gpu is None else self.gpu.to_dict(),
            "platform": None if self.platform is None else str(self.platform),
            "jdl_variables": dict(self.jdl_variables),
            "user": self.user,
            "requirements": None if self.requirements is None else write_expression(self.requirements),
            "extra": {k: plain_value(v) for k, v in self.extra.items()},
            # What the broker matches on the node (docs/broker.md): the arch as it decides it, whatever wrote it.
            "arch": self.needed_arch,
            "cpu_level": self.cpu_level,
            "require_container": self.require_container,
            "min_pilot_version": self.min_pilot_version,
        }


def plain_value(value: Value) -> Any:
    """A JDL value as plain Python data: str, int, float, bool, list, or an expression's text."""
    if isinstance(value, (String, Boolean)):
        return value.value
    if isinstance(value, Number):
        return value.value
    if isinstance(value, ListValue):
        return [plain_value(i) for i in value.items]
    return write_value(value)


# -- converters: one JDL value to one typed field; each raises JdlError at the value's position --


def _fail(value: Value, message: str) -> JdlError:
    return JdlError(message, value.line, value.column)


def _kind(value: Value) -> str:
    if isinstance(value, String):
        return "a string"
    if isinstance(value, Number):
        return "a number"
    if isinstance(value, Boolean):
        return "a boolean"
    if isinstance(value, ListValue):
        return f"a list of {len(value.items)} items"
    return "an expression"


def _scalar(value: Value) -> Value:
    if isinstance(value, ListValue) and len(value.items) == 1:
        return value.items[0]
    return value


def _string(value: Value, key: str) -> str:
    v = _scalar(value)
    if isinstance(v, String):
        return v.value
    if isinstance(v, Number):
        return v.text
    raise _fail(value, f"{key} must be a string, got {_kind(value)}")


def _nonempty_string(value: Value, key: str) -> str:
    s = _string(value, key)
    if not s.strip():
        raise _fail(value, f"{key} must not be empty")
    return s


def _data_list_name(value: Value, key: str) -> str:
    # Joined to the work directory by the JobWrapper: a path would write outside it (JAliEn does not check).
    name = _nonempty_string(value, key)
    problem = datalist.name_problem(name)
    if problem is not None:
        raise _fail(value, problem)
    return name


def _data_list_format(value: Value, key: str) -> str:
    # JAliEn writes nothing for a format it does not know, and the payload then misses its input list.
    text = _nonempty_string(value, key)
    problem = datalist.format_problem(text)
    if problem is not None:
        raise _fail(value, problem)
    return text


def _string_list(value: Value, key: str) -> Tuple[Value, ...]:
    items = value.items if isinstance(value, ListValue) else (value,)
    for item in items:
        if not isinstance(item, String):
            raise _fail(item, f"{key} must be a string or a list of strings, found {_kind(item)}")
    return items


def _strings(value: Value, key: str) -> Tuple[str, ...]:
    return tuple(i.value for i in _string_list(value, key) if isinstance(i, String))


def _int(value: Value, key: str, lo: int, hi: Optional[int], unit: str = "") -> int:
    """A whole number in [lo, hi]; `unit` (" seconds") only shapes the messages."""
    v = _scalar(value)
    if isinstance(v, Number) and _INT_TEXT.match(v.text):
        n = int(v.text)
    elif isinstance(v, String) and _INT_TEXT.match(v.value):
        n = int(v.value)
    else:
        shown = v.text if isinstance(v, Number) else v.value if isinstance(v, String) else None
        got = repr(shown) if shown is not None else _kind(value)
        raise _fail(value, f"{key} must be a whole number{' of' + unit if unit else ''}, got {got}")
    if hi is not None and not lo <= n <= hi:
        raise _fail(value, f"{key} must be between {lo} and {hi}{unit}, got {n}")
    if n < lo:
        what = "a positive whole number" if lo == 1 else f"at least {lo}"
        raise _fail(value, f"{key} must be {what}{' of' + unit if unit and lo == 1 else ''}, got {n}")
    return n


def _positive_float(value: Value, key: str) -> float:
    v = _scalar(value)
    text = v.text if isinstance(v, Number) else v.value if isinstance(v, String) else None
    if text is None or not _FLOAT_TEXT.match(text):
        raise _fail(value, f"{key} must be a number, got {text!r}" if text is not None else f"{key} must be a number")
    x = float(text)
    if not (x > 0 and math.isfinite(x)):
        raise _fail(value, f"{key} must be more than zero, got {text.strip()}")
    return x


_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


def _bool(value: Value, key: str) -> bool:
    v = _scalar(value)
    if isinstance(v, Boolean):
        return v.value
    text = v.text if isinstance(v, Number) else v.value.strip().lower() if isinstance(v, String) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _fail(value, f"{key} must be true or false")


def _size(value: Value, key: str) -> int:
    v = _scalar(value)
    if isinstance(v, String):
        return parse_size(v.value, line=v.line, column=v.column, key=key)
    if isinstance(v, Number):
        raise _fail(value, f"{key} needs a unit K, M, G or T: write \"{v.text}MB\" or \"{v.text}GB\"")
    raise _fail(value, f"{key} must be a size such as \"8GB\", got {_kind(value)}")


def _outputs(value: Value, key: str, archive_required: bool = False) -> Tuple[OutputSpec, ...]:
    return tuple(
        parse_output_spec(i.value, line=i.line, column=i.column, archive_required=archive_required)
        for i in _string_list(value, key)
        if isinstance(i, String)
    )


def _inputs(value: Value, key: str) -> Tuple[InputEntry, ...]:
    return tuple(
        parse_input_entry(i.value, line=i.line, column=i.column, key=key)
        for i in _string_list(value, key)
        if isinstance(i, String)
    )


def _gpu(value: Value, key: str) -> Optional[GpuRequest]:
    v = _scalar(value)
    if isinstance(v, Boolean):
        return GpuRequest(1) if v.value else None
    if isinstance(v, Number) or (isinstance(v, String) and _INT_TEXT.match(v.value)):
        # The upper bound is central's (central/jobs.py _check_columns names it as jdl.GPU).
        n = _int(v, key, 0, None, " GPUs")
        return GpuRequest(n) if n else None
    if isinstance(v, String) and v.value.strip():
        text = v.value.strip()
        exact = text.startswith("=")
        if exact:
            text = text[1:].strip()
        if not text:
            raise _fail(value, f"{key} = \"=\" names no model: write the model after it, \"=Radeon Instinct MI50 32GB\"")
        return GpuRequest(1, model=text) if exact else GpuRequest(1, text)
    raise _fail(value, f"{key} must be a number of GPUs or a vendor or model such as \"MI50\", or an exact model "
                       "such as \"=Radeon Instinct MI50 32GB\"")


def _gpu_term(problem_of: Callable[[str], Optional[str]]) -> Callable[[Value, str], str]:
    """A reader of a GPU term (GPUVendor, GPUArch): a non-empty string that `problem_of` finds nothing wrong with."""

    def read(value: Value, key: str) -> str:
        text = _nonempty_string(value, key).strip()
        problem = problem_of(text)
        if problem is not None:
            raise _fail(value, f"{key} {problem}")
        return text

    return read


def _gpu_request(values: Dict[str, Any], doc: JdlDocument) -> None:
    """GPU, GPUCount, GPUVendor and GPUArch as one request in values["gpu"]. GPUVendor or GPUArch alone ask for one
    GPU; GPUCount sets the count of any of them (GPUCount = 0 asks for none, whatever the others say)."""
    vendor, arch = values.pop("gpu_vendor", None), values.pop("gpu_arch", None)
    count = values.pop("gpu_count", None)
    req: Optional[GpuRequest] = values.get("gpu")
    entry = doc.entry("GPUCount")
    if count is not None and entry is not None and req is not None and req.name is None and req.model is None \
            and count != req.count:
        raise JdlError(f"GPUCount = {count} and GPU = {req.count} ask for different numbers of GPUs: write one",
                       entry.line, entry.column)
    if req is None and vendor is None and arch is None and not count:
        values.pop("gpu", None)
        return
    req = req or GpuRequest(1)
    n = req.count if count is None else count
    values["gpu"] = None if n == 0 else GpuRequest(n, req.name, req.model, vendor, arch)


def _parsed(parse: Callable[[str], Any]) -> Callable[[Value, str], Any]:
    """A reader of a string attribute that `parse` turns into its value (Platform, Arch, CPULevel,
    MinPilotVersion): parse's ValueError becomes the JdlError at the attribute's line."""

    def read(value: Value, key: str) -> Any:
        try:
            return parse(_nonempty_string(value, key))
        except ValueError as e:
            raise _fail(value, f"{key}: {e}") from None

    return read


def _requirements(value: Value, key: str) -> Expr:
    if isinstance(value, Expression):
        return value.tree
    if isinstance(value, Boolean):
        return value
    if isinstance(value, String):
        try:
            return parse_expression(value.value)
        except JdlError as e:
            # Place the error inside the string; exact unless the string holds escapes before it.
            col = value.column + e.column if e.line == 1 else e.column
            raise JdlError(f"in the {key} string: {e.message}", value.line + e.line - 1, col) from None
    raise _fail(value, f"{key} must be a boolean expression such as other.TTL > 7200, got {_kind(value)}")


def _export_text(value: Value) -> str:
    if isinstance(value, ListValue):
        return JDL_LIST_SEPARATOR.join(_export_text(i) for i in value.items)
    if isinstance(value, String):
        return value.value
    if isinstance(value, Number):
        return value.text
    if isinstance(value, Boolean):
        return "true" if value.value else "false"
    return write_value(value)


def _jdl_variables(value: Value, doc: JdlDocument, key: str) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for item in _string_list(value, key):
        assert isinstance(item, String)
        name = item.value.strip()
        if not _KEY_NAME.match(name):
            raise _fail(item, f"{key} item {item.value!r} is not a key name (letters, digits and '_')")
        target = doc.get(name)
        if target is None:
            raise _fail(item, f"{key} names {name!r}, which this JDL does not set")
        text = _export_text(target)
        if "\0" in text:
            raise _fail(target, f"{name} holds a NUL character, which cannot be exported as {key}")
        env[JDL_VARIABLE_PREFIX + name.upper()] = text
    return env


def _check_outputs_named_once(doc: JdlDocument, values: Mapping[str, Any]) -> None:
    """An archive or a file named by two entries of Output, OutputFile and OutputArchive would be uploaded twice
    to one LFN (the second upload fails, and the job with it, after all its work): refused here instead, where
    the second entry is. Patterns are left alone: what they match is known only in the work directory."""
    seen: Dict[str, Tuple[str, int, int]] = {}
    for key, name in (("Output", "output"), ("OutputFile", "output_file"), ("OutputArchive", "output_archive")):
        entry = doc.entry(key)
        if entry is None:
            continue
        items = entry.value.items if isinstance(entry.value, ListValue) else (entry.value,)
        # One spec per item, in order: the converter took them all (it refuses any that is not a string).
        for item, spec in zip(items, values[name]):
            for output in (spec.archive,) if spec.archive is not None else spec.members:
                if any(c in output for c in "*?["):
                    continue
                first = seen.get(output)
                if first is not None:
                    where, line, column = first
                    raise _fail(item, f"output {output!r} is named twice: here in {entry.key} and in {where} at "
                                      f"line {line}, column {column}")
                seen[output] = (entry.key, item.line, item.column)


Converter = Callable[[Value, str], object]

#: The keys the model knows, by lower-case name: (field name, ALICE spelling, converter).
_FIELDS: Dict[str, Tuple[str, str, Converter]] = {
    k.lower(): (f, k, c)
    for f, k, c in (
        ("executable", "Executable", _nonempty_string),
        ("arguments", "Arguments", _string),
        ("packages", "Packages", _strings),
        ("input_file", "InputFile", _inputs),
        ("input_data", "InputData", _inputs),
        ("input_data_collection", "InputDataCollection", _inputs),
        ("input_data_list", "InputDataList", _data_list_name),
        ("input_data_list_format", "InputDataListFormat", _data_list_format),
        ("output", "Output", _outputs),
        ("output_file", "OutputFile", _outputs),
        ("output_archive", "OutputArchive", lambda v, k: _outputs(v, k, archive_required=True)),
        ("output_error_e", "OutputErrorE", _outputs),
        ("output_dir", "OutputDir", _nonempty_string),
        ("validation_command", "ValidationCommand", _nonempty_string),
        ("ttl", "TTL", lambda v, k: _int(v, k, 1, None, " seconds")),
        ("cpu_cores", "CPUCores", lambda v, k: _int(v, k, 1, MAX_CPU_CORES)),
        ("memory_size", "MemorySize", _size),
        ("work_directory_size", "WorkDirectorySize", _size),
        ("price", "Price", _positive_float),
        ("forced_kill_timeout", "ForcedKillTimeout", lambda v, k: _int(v, k, 0, MAX_FORCED_KILL_TIMEOUT, " seconds")),
        ("abort_on_core", "AbortOnCore", _bool),
        ("gpu", "GPU", _gpu),
        ("gpu_count", "GPUCount", lambda v, k: _int(v, k, 0, None, " GPUs")),
        ("gpu_vendor", "GPUVendor", _gpu_term(gpus.vendor_problem)),
        ("gpu_arch", "GPUArch", _gpu_term(gpus.arch_problem)),
        ("platform", "Platform", _parsed(parse_platform)),
        ("user", "User", _nonempty_string),
        ("requirements", "Requirements", _requirements),
        ("arch", "Arch", _parsed(parse_arch)),
        ("cpu_level", "CPULevel", _parsed(parse_cpu_level)),
        ("require_container", "RequireContainer", _bool),
        ("min_pilot_version", "MinPilotVersion", _parsed(check_version)),
    )
}

#: The ALICE spelling of every key the model reads (JDLVariables included).
KNOWN_KEYS: Tuple[str, ...] = tuple(spelling for _, spelling, _ in _FIELDS.values()) + ("JDLVariables",)


def _check_arch(doc: JdlDocument, values: Mapping[str, Any]) -> None:
    """Arch and Platform's architecture must agree, and CPULevel is an x86-64 level: an aarch64 job asking one
    could match nowhere."""
    arch, platform = values.get("arch"), values.get("platform")
    if arch is not None and platform is not None and platform.arch is not None and platform.arch != arch:
        e = doc.entry("Arch")
        raise JdlError(f"Arch is {arch!r} but Platform {str(platform)!r} names {platform.arch!r}",
                       e.line if e else 0, e.column if e else 0)
    if values.get("cpu_level"):
        job_arch = arch or (platform.arch if platform is not None else None) or \
            arch_from_packages(values.get("packages", ())) or DEFAULT_ARCH
        if job_arch != DEFAULT_ARCH:
            e = doc.entry("CPULevel")
            raise JdlError(f"CPULevel is an x86-64 level, but the job runs on {job_arch}", e.line if e else 0,
                           e.column if e else 0)


def _build(doc: JdlDocument) -> JobDescription:
    values: Dict[str, Any] = {}
    extra: Dict[str, Value] = {}
    for entry in doc.entries:
        lk = entry.key.lower()
        spec = _FIELDS.get(lk)
        if spec is not None:
            name, spelling, convert = spec
            values[name] = convert(entry.value, spelling)
        elif lk == "jdlvariables":
            values["jdl_variables"] = _jdl_variables(entry.value, doc, "JDLVariables")
        else:
            extra[entry.key] = entry.value
    _check_outputs_named_once(doc, values)
    _gpu_request(values, doc)
    if "executable" not in values:
        first = doc.entries[0] if doc.entries else None
        line, col = (first.line, first.column) if first is not None and first.line else (1, 1)
        raise JdlError("missing required key 'Executable'", line, col)
    _check_arch(doc, values)
    cores = values.get("cpu_cores", DEFAULT_CPU_CORES)
    values.setdefault("memory_size", DEFAULT_MEMORY_PER_CORE * cores)
    values.setdefault("work_directory_size", DEFAULT_WORKDIR_PER_CORE * cores)
    return JobDescription(**values, extra=extra, document=doc)

