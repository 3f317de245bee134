"""The computing element's configuration: a YAML file, then command-line flags. A bad value is a ConfigError naming
the file and line (or the flag) and the field."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, get_type_hints

from gridpilot.ce.backend import Resources
from gridpilot.ce.script import valid_variable_name
from gridpilot.client import PILOT_TOKEN_MAX_TTL_S
from gridpilot.endpoints import DEFAULT_CENTRAL_URL
from gridpilot.errors import ConfigError
from gridpilot.tls import CA_FILE_ENV, ca_context

BACKENDS = ("slurm", "htcondor", "local")
#: The keys of one resource shape; missing ones come from the queue defaults (cores, memory_mb, wall_time) or
#: are none (no GPUs).
SHAPE_KEYS = ("cores", "memory_mb", "wall_time", "gpus", "gpu_vendor", "gpu_model")


@dataclass
class CESettings:
    """Sizes in MB, times in seconds."""

    central_url: str = DEFAULT_CENTRAL_URL
    #: The CE token (role ce) in a file only the CE's user can read.
    token_file: Optional[str] = None
    #: The CA bundle (PEM) an https central is verified with (default $GRIDPILOT_CA_FILE, else the system's CA
    #: certificates); the pilots get its path too, so it must be there on the worker nodes (or set
    #: GRIDPILOT_CA_FILE in `environment` to where they have it).
    ca_file: Optional[str] = field(default_factory=lambda: os.environ.get(CA_FILE_ENV) or None)
    #: None: the site and CE the token is bound to (checked against the token when given).
    site: Optional[str] = None
    ce: Optional[str] = None
    backend: str = "local"
    #: Pilots waiting in the batch queue, pilots in the batch system at all (queued, running, held), new per cycle.
    max_queued: int = 10
    max_running: int = 50
    per_cycle: int = 5
    #: A pilot still queued (or held, or suspended) this long after its submission is removed (and another
    #: submitted if work still waits).
    max_queue_time: float = 3600.0
    #: A pilot that started less than this ago has not matched yet: it still counts against the waiting jobs.
    startup_grace: float = 120.0
    #: The queue defaults: what a pilot asks the batch system for when no shape is configured.
    cores: int = 1
    memory_mb: int = 2000
    wall_time: int = 3600
    #: Resource shapes to probe central for and submit pilots of: [{cores, memory_mb, wall_time, gpus, gpu_vendor,
    #: gpu_model}], missing keys taken from the queue defaults (no GPUs). Empty: one shape, the queue defaults.
    shapes: List[Dict[str, Any]] = field(default_factory=list)
    #: The gridpilot installation the pilots run (`<path>/bin/gridpilot`), as a CVMFS directory would hold it.
    install_path: str = sys.prefix
    #: Where each pilot's directory (script, token file, output) is made; on a filesystem the nodes see.
    pilot_dir: str = field(default_factory=lambda: os.path.join(os.environ.get("TMPDIR", "/tmp"), "gridpilot-ce"))
    #: Root of the jobs' work directories on the node; None: `work` in the pilot's directory.
    pilot_workdir: Optional[str] = None
    #: The user pilots run as (token file and directory are theirs); None: the CE's own user.
    pilot_user: Optional[str] = None
    #: Extra variables for the pilots (e.g. GRIDPILOT_MAX_EMPTY_MATCHES, X509 paths).
    environment: Dict[str, str] = field(default_factory=dict)
    #: Extra site-map fields for the probe (platform, arch, partition, close_se, ...).
    site_map: Dict[str, Any] = field(default_factory=dict)
    #: The pilot token lives for the longest a pilot may wait in the queue, then its wall time, plus this
    #: (pilot_token_ttl).
    token_margin: float = 600.0
    cycle_interval: float = 60.0
    #: Slurm: partition, account, more sbatch arguments.
    slurm_partition: Optional[str] = None
    slurm_account: Optional[str] = None
    slurm_args: List[str] = field(default_factory=list)
    #: HTCondor: the schedd to submit to (None: the local one), more submit-description lines.
    htcondor_schedd: Optional[str] = None
    htcondor_submit: Dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    #: While central is unreachable: the longest wait between two tries (they start at 1 s and double, with
    #: jitter), and how often to log that it is still down. A site has a few CEs and each try is one GET /health:
    #: a short cap costs central nothing and bounds how late a CE resumes after an outage.
    central_backoff_max: float = 15.0
    central_down_log_interval: float = 600.0
    #: Serve the CE's Prometheus /metrics on this port (0: any free one, said at start) and address; None: not at
    #: all. Needs prometheus_client (pip install 'gridpilot[ce]').
    metrics_port: Optional[int] = None
    metrics_address: str = "127.0.0.1"

    def token(self) -> str:
        if not self.token_file:
            raise ConfigError("no CE token: set token_file in the configuration or give --token-file")
        try:
            text = Path(self.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"token_file {self.token_file}: {e.strerror}") from e
        if not text:
            raise ConfigError(f"token_file {self.token_file} is empty")
        return text

    def resource_shapes(self) -> List[Resources]:
        """The shapes to submit pilots of, smallest first."""
        return sorted(set(self._shape(i, s) for i, s in enumerate(self.shapes or [{}])))

    def _shape(self, i: int, s: Mapping[str, Any]) -> Resources:
        try:
            return Resources(cores=s.get("cores", self.cores), memory_mb=s.get("memory_mb", self.memory_mb),
                             wall_s=s.get("wall_time", self.wall_time), gpus=s.get("gpus", 0),
                             gpu_vendor=s.get("gpu_vendor", ""), gpu_model=s.get("gpu_model", ""))
        except ValueError as e:
            raise ConfigError(f"field 'shapes[{i}]': {e}") from None

    def pilot_token_ttl(self, wall_s: int) -> float:
        """How long the agent token of a pilot with this wall time must live: the longest it may wait in the queue
        (max_queue_time, and up to a cycle more before the CE sees it and removes it), then its whole wall time
        (the runner starts the clock of its slot when it starts), then token_margin."""
        return self.max_queue_time + self.cycle_interval + wall_s + self.token_margin


_FIELDS = {f.name: f for f in dataclasses.fields(CESettings)}


_TYPES = get_type_hints(CESettings)


#: Where each item of a list field, or each key of a mapping field, was written: {index or key: "file:line"}.
Parts = Dict[Union[int, str], str]


def _coerce(name: str, value: Any, where: str, parts: Optional[Parts] = None) -> Any:
    kind = _TYPES[name]
    optional = getattr(kind, "__origin__", None) is Union and type(None) in kind.__args__
    if optional:
        kind = next(a for a in kind.__args__ if a is not type(None))
        if value is None:
            return None
    base = getattr(kind, "__origin__", kind)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: field '{name}' must be {expected}, got {value!r}")

    if base is int:
        if isinstance(value, bool):
            raise bad("a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
    if base is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if base is list:
        if name == "shapes":
            keys = ", ".join(SHAPE_KEYS)
            if not isinstance(value, list):
                raise bad(f"a list of {{{keys}}} mappings")
            for i, v in enumerate(value):
                here = (parts or {}).get(i, where)
                if not isinstance(v, dict):
                    raise ConfigError(f"{here}: field 'shapes[{i}]' must be a mapping of {{{keys}}}, got {v!r}")
                unknown = sorted(str(k) for k in set(v) - set(SHAPE_KEYS))
                if unknown:
                    raise ConfigError(f"{here}: field 'shapes[{i}]' has unknown keys {unknown} (known: {keys})")
            return [dict(v) for v in value]
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad("a list of strings")
    if base is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            if name == "site_map":
                return dict(value)
            if all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()):
                return {k: str(v) for k, v in value.items()}
        raise bad("a mapping of names to values")
    raise bad(str(kind))  # pragma: no cover


def _yaml_layer(path: Path) -> Dict[str, Tuple[Any, str, Parts]]:
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the CE configuration: {e.strerror}") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{pos}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the configuration must be a mapping of field: value")
    out: Dict[str, Tuple[Any, str, Parts]] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{path}:{key_node.start_mark.line + 1}"
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(_FIELDS))})")
        parts: Parts = {}
        if isinstance(value_node, yaml.SequenceNode):
            parts = {i: f"{path}:{item.start_mark.line + 1}" for i, item in enumerate(value_node.value)}
        elif isinstance(value_node, yaml.MappingNode):
            parts = {str(k.value): f"{path}:{k.start_mark.line + 1}" for k, _ in value_node.value}
        out[key] = (yaml.SafeLoader(yaml.serialize(value_node)).get_single_data(), where, parts)
    return out


def load_settings(path: Optional[Union[str, Path]] = None, overrides: Optional[Mapping[str, Any]] = None) -> CESettings:
    """The file's values, then the flags (None: not given); checked as a whole."""
    values: Dict[str, Any] = {}
    wheres: Dict[str, str] = {}
    part_wheres: Dict[str, Parts] = {}
    if path is not None:
        for key, (value, where, parts) in _yaml_layer(Path(path)).items():
            values[key] = _coerce(key, value, where, parts)
            wheres[key] = where
            part_wheres[key] = parts
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown option '{name}'")
        where = f"option --{name.replace('_', '-')}"
        values[name] = _coerce(name, value, where)
        wheres[name] = where
        part_wheres.pop(name, None)
    s = CESettings(**values)

    def at(name: str, part: Optional[Union[int, str]] = None) -> str:
        if part is not None and part in part_wheres.get(name, {}):
            return part_wheres[name][part]
        return wheres.get(name, "default")

    if s.backend not in BACKENDS:
        raise ConfigError(f"{at('backend')}: field 'backend' must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    for name in ("max_queued", "max_running", "per_cycle", "cores", "memory_mb", "wall_time"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{at(name)}: field '{name}' must be at least 1, got {getattr(s, name)}")
    if not s.central_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at('central_url')}: field 'central_url' must start with http:// or https://, "
                          f"got {s.central_url!r}")
    if s.metrics_port is not None and not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"{at('metrics_port')}: field 'metrics_port' must be a port number from 0 to 65535, "
                          f"got {s.metrics_port}")
    if not s.metrics_address.strip():
        raise ConfigError(f"{at('metrics_address')}: field 'metrics_address' must be an address to listen on")
    for name in ("max_queue_time", "cycle_interval", "token_margin", "startup_grace", "central_backoff_max",
                 "central_down_log_interval"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{at(name)}: field '{name}' must be more than 0, got {getattr(s, name)}")
    # Checked here, before central or the batch system is asked anything: a name the shell cannot export would
    # otherwise surface only when the first pilot's script is written.
    for k in s.environment:
        if not valid_variable_name(k):
            raise ConfigError(f"{at('environment', k)}: field 'environment': variable name {k!r} is not a valid shell "
                              "name (letters, digits and _, not starting with a digit)")
    for i, raw in enumerate(s.shapes):
        try:
            s._shape(i, raw)
        except ConfigError as e:
            raise ConfigError(f"{at('shapes', i)}: {e}") from None
    if s.ca_file:
        s.ca_file = os.path.abspath(os.path.expanduser(s.ca_file))  # the pilots start elsewhere
        try:
            ca_context(s.ca_file)
        except ConfigError as e:
            where = at("ca_file") if at("ca_file") != "default" else f"environment variable {CA_FILE_ENV}"
            raise ConfigError(f"{where}: field 'ca_file': {e}") from None
    _check_token_life(s, at)
    return s


def _check_token_life(s: CESettings, at: Callable[..., str]) -> None:
    """Refuse a configuration whose pilots would need a longer-lived agent token than central mints: each of them
    would be refused at submission, or would lose its token mid-job."""
    walls = [(raw.get("wall_time", s.wall_time), i) for i, raw in enumerate(s.shapes or [{}])]
    wall, i = max(walls, key=lambda w: w[0])
    need = s.pilot_token_ttl(wall)
    if need <= PILOT_TOKEN_MAX_TTL_S:
        return
    if s.shapes and "wall_time" in s.shapes[i]:
        where, field_name = at("shapes", i), f"shapes[{i}].wall_time"
    else:
        # The wall time is the queue default, or the queue wait is what makes it long: name what was written.
        given = [n for n in ("wall_time", "max_queue_time", "token_margin", "cycle_interval") if at(n) != "default"]
        field_name = given[0] if given else "wall_time"
        where = at(field_name)
    raise ConfigError(
        f"{where}: field '{field_name}': pilots of wall time {wall} s need an agent token living {need:.0f} s "
        f"(max_queue_time {s.max_queue_time:g} + cycle_interval {s.cycle_interval:g} + wall time {wall} + "
        f"token_margin {s.token_margin:g}), and central mints pilot tokens for at most {PILOT_TOKEN_MAX_TTL_S:.0f} s: "
        "shorten the wall time or the queue wait")


__all__ = ["BACKENDS", "CESettings", "SHAPE_KEYS", "load_settings"]
