"""Pilot configuration: a YAML file, then `GRIDPILOT_*` environment variables, then command-line flags.

Each layer overrides the one before. Every value is checked against its field's type; a bad one is a ConfigError
naming the file and line (or the variable, or the flag) and the field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union, get_type_hints


from gridpilot.endpoints import DEFAULT_CENTRAL_URL, default_state_dir, url_from_state_dir
from gridpilot.errors import ConfigError
from gridpilot.tls import ca_context

ENV_PREFIX = "GRIDPILOT_"


@dataclass
class PilotConfig:
    """What a JobRunner and its JobAgents need to know. Sizes in MB, times in seconds."""

    #: None (not set): the URL `central serve` wrote into the state directory (central.url), else
    #: DEFAULT_CENTRAL_URL; load_config resolves it, so a loaded configuration always has one.
    central_url: Optional[str] = None
    #: Where to look for central.url; None: GRIDPILOT_STATE_DIR, else ~/.local/state/gridpilot.
    state_dir: Optional[str] = None
    #: The agent token itself, or (preferred) a file holding it, readable only by the pilot's user.
    token: Optional[str] = None
    token_file: Optional[str] = None
    #: The CA bundle (PEM) an https central's certificate is verified with; None: the system's CA certificates.
    ca_file: Optional[str] = None
    #: None (not set): the site and CE the agent token is bound to (the runner asks central at start-up). A value
    #: that disagrees with the token is a configuration error: central would refuse every match.
    site: Optional[str] = None
    ce: Optional[str] = None
    partition: str = ""
    node: str = field(default_factory=lambda: os.uname().nodename)
    workdir: str = field(default_factory=lambda: os.path.join(os.environ.get("TMPDIR", "/tmp"), "gridpilot-work"))
    #: Seconds this slot may run; None: until told to stop.
    slot_ttl: Optional[float] = None
    #: None: from the batch system or the CPUs this process may run on.
    cores: Optional[int] = None
    memory_mb: Optional[int] = None
    disk_mb: Optional[int] = None
    #: How long to wait between empty matches, and how many in a row (with nothing running) end the runner. The
    #: same capped, jittered backoff paces the tries while central is unreachable, which are not empty matches.
    match_backoff: float = 5.0
    match_backoff_max: float = 120.0
    max_empty_matches: int = 10
    #: How long the runner tries to reach central at start-up before it gives up (exit CENTRAL_UNREACHABLE). Once
    #: it has started, it rides out an outage of any length until the slot's end.
    startup_window: float = 300.0
    heartbeat_interval: float = 60.0
    monitor_fast_s: float = 1.0
    monitor_slow_s: float = 60.0
    #: The monitor's medium tier: network bytes (a job with its own network namespace) and GPU use (a job with GPUs).
    monitor_medium_s: float = 15.0
    proc_trace_interval: float = 600.0
    #: The idle rule's window: a payload using under 10% of its cores' time for this long is killed (IDLE_CPU).
    idle_window_s: float = 900.0
    #: The slot cgroup tree: "auto" builds it where the cgroup is writable, "off" never.
    cgroups: str = "auto"
    #: Kernel limits on each job's cgroup (memory.max/high, swap, cpu.max, pids.max; v1 equivalents on hybrid
    #: hosts), where the controllers are delegated: see gridpilot/isolation/limits.py for the numbers.
    cgroup_limits: bool = True
    #: pids.max of a job's cgroup (threads count too); 0: no limit.
    pids_max: int = 4096
    #: Swap a job may use (memory.swap.max, or v1 memsw minus memory); 0: none.
    swap_mb: int = 0
    sysfs: str = "/sys"
    #: The pci.ids database that names the node's GPUs (their model in the site map); None: the usual places
    #: (/usr/share/misc/pci.ids from pciutils, /usr/share/hwdata/pci.ids from hwdata). Without one, GPUs still
    #: count, by vendor and PCI id, but jobs asking for a GPU model do not match here.
    pci_ids: Optional[str] = None
    #: The storage elements close to this node, closest first (names central knows): outputs go there. Required.
    close_se: List[str] = field(default_factory=list)
    users: List[str] = field(default_factory=list)
    nousers: List[str] = field(default_factory=list)
    keep_workdir: bool = False
    #: The agent gives the wrapper this long, after SIGTERM from the batch system, to upload outputs.
    drain_grace: float = 120.0
    #: How long an agent whose job has ended keeps trying to deliver the job's last reports (its final state among
    #: them) while central is unreachable. Central's own timeout turns a silent job ZOMBIE after an hour.
    report_grace: float = 600.0
    #: Containers (issue 6). "auto" probes the runtimes in `container_order` and uses the first that works with the
    #: job's image; a runtime name forces that one; "none" runs without a container (PID namespace only, below).
    container_runtime: str = "auto"
    container_order: List[str] = field(
        default_factory=lambda: ["apptainer-cvmfs", "apptainer", "singularity", "podman", "bwrap"]
    )
    #: A node with no working runtime refuses to match (and says why) instead of running jobs uncontained.
    require_container: bool = False
    #: Image directories named <os><major>[.<minor>][-<arch>][-<tag>] (el9-x86_64, el9.4-x86_64-2024.06), chosen by
    #: the job's Platform; default_image (a path, or a name in images_dir) otherwise; site_image overrides both.
    images_dir: Optional[str] = None
    default_image: Optional[str] = None
    site_image: Optional[str] = None
    #: Extra binds into the container, each "src[:dst[:ro|rw]]" (dst defaults to src, mode to ro).
    container_binds: List[str] = field(default_factory=list)
    #: Where the ALICE CVMFS repository keeps its Apptainer (the "apptainer-cvmfs" runtime).
    apptainer_cvmfs_path: str = "/cvmfs/alice.cern.ch/containers/bin/apptainer/current/bin"
    #: Without a container, run the JobWrapper in its own PID namespace (`unshare`), so `kill -9 -1` cannot reach us.
    pid_namespace: bool = True
    #: Seconds a runtime gets to run the probe command in the image before it counts as not working.
    container_probe_timeout: float = 60.0
    #: The JobWrapper keeps this many MB of each of the payload's stdout and stderr and throws the rest away (traced),
    #: so a payload flooding its output cannot fill the node's disk through it. 0: no cap.
    stdout_max_mb: int = 1024

    def agent_token(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"token_file {self.token_file}: {e.strerror}") from e
        raise ConfigError("no agent token: set token_file (or token) in the configuration, GRIDPILOT_TOKEN_FILE, or --token-file")


_FIELDS = {f.name: f for f in dataclasses.fields(PilotConfig)}
_TYPES = get_type_hints(PilotConfig)


def _coerce(name: str, value: Any, where: str) -> Any:
    """`value` as the type of field `name`; strings (from the environment or flags) are parsed."""
    kind = _TYPES[name]
    optional = getattr(kind, "__origin__", None) is Union and type(None) in kind.__args__
    if optional:
        kind = next(a for a in kind.__args__ if a is not type(None))
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
    base = getattr(kind, "__origin__", kind)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: field '{name}' must be {expected}, got {value!r}")

    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if base is int:
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if base is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if base in (list, List):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad("a list of strings (or a comma-separated string)")
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    raise bad(str(kind))  # pragma: no cover - every field type is handled above


def _yaml_layer(path: Path) -> Dict[str, Tuple[Any, str]]:
    # Imported here: the agent and the wrapper read PilotConfig but never YAML, and PyYAML costs each of them 2 MB.
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from e
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
    out: Dict[str, Tuple[Any, str]] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{path}:{key_node.start_mark.line + 1}"
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(_FIELDS))})")
        value = yaml.SafeLoader(yaml.serialize(value_node)).get_single_data()
        out[key] = (value, where)
    return out


def load_config(
    path: Optional[Union[str, Path]] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> PilotConfig:
    """Build the configuration from the three layers. `overrides` are the flags (None values are "not given")."""
    env = os.environ if environ is None else environ
    values: Dict[str, Any] = {}
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None:
        for key, (value, where) in _yaml_layer(Path(path)).items():
            values[key] = _coerce(key, value, where)
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = _coerce(name, env[var], f"environment variable {var}")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown option '{name}'")
        values[name] = _coerce(name, value, f"option --{name.replace('_', '-')}")
    cfg = PilotConfig(**values)
    cfg.central_url = resolve_central_url(cfg.central_url, cfg.state_dir, env)
    if not cfg.central_url.startswith(("http://", "https://")):
        raise ConfigError(f"field 'central_url' must start with http:// or https://, got {cfg.central_url!r}")
    for name in ("match_backoff", "match_backoff_max", "startup_window"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"field '{name}' must be more than 0, got {getattr(cfg, name)}")
    if cfg.max_empty_matches < 1:
        raise ConfigError(f"field 'max_empty_matches' must be >= 1, got {cfg.max_empty_matches}")
    if cfg.cgroups not in ("auto", "off"):
        raise ConfigError(f"field 'cgroups' must be 'auto' or 'off', got {cfg.cgroups!r}")
    if cfg.pids_max < 0:
        raise ConfigError(f"field 'pids_max' must be >= 0 (0: no limit), got {cfg.pids_max}")
    if cfg.swap_mb < 0:
        raise ConfigError(f"field 'swap_mb' must be >= 0, got {cfg.swap_mb}")
    _check_containers(cfg)
    if cfg.stdout_max_mb < 0:
        raise ConfigError(f"field 'stdout_max_mb' must be >= 0 (0: no cap), got {cfg.stdout_max_mb}")
    if cfg.cores is not None and cfg.cores < 1:
        raise ConfigError(f"field 'cores' must be >= 1, got {cfg.cores}")
    if cfg.ca_file:
        # Checked here, so a pilot with a wrong path stops at start-up (a config error), not in every agent.
        try:
            ca_context(cfg.ca_file)
        except ConfigError as e:
            raise ConfigError(f"field 'ca_file': {e}") from None
    return cfg


def resolve_central_url(explicit: Optional[str], state_dir: Optional[str],
                        environ: Optional[Mapping[str, str]] = None) -> str:
    """Central's URL: the one set (flag, GRIDPILOT_CENTRAL_URL or the file; `explicit`), else the one `central
    serve` wrote into the state directory, else DEFAULT_CENTRAL_URL: as the user commands find central."""
    if explicit:
        return explicit.rstrip("/")
    sd = Path(state_dir).expanduser() if state_dir else default_state_dir(environ)
    return url_from_state_dir(sd) or DEFAULT_CENTRAL_URL


#: The container runtimes a configuration may name (python/gridpilot/isolation/runtimes/), in the default order.
CONTAINER_RUNTIMES = ("apptainer-cvmfs", "apptainer", "singularity", "podman", "bwrap")


def _check_containers(cfg: PilotConfig) -> None:
    known = ", ".join(CONTAINER_RUNTIMES)
    if cfg.container_runtime not in ("auto", "none", *CONTAINER_RUNTIMES):
        raise ConfigError(f"field 'container_runtime' must be 'auto', 'none' or one of {known}, got {cfg.container_runtime!r}")
    for name in cfg.container_order:
        if name not in CONTAINER_RUNTIMES:
            raise ConfigError(f"field 'container_order' names an unknown runtime {name!r} (known: {known})")
    for bind in cfg.container_binds:
        parts = bind.split(":")
        if not parts[0].startswith("/") or len(parts) > 3 or (len(parts) > 1 and not parts[1].startswith("/")) \
                or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ConfigError(f"field 'container_binds': {bind!r} is not \"src[:dst[:ro|rw]]\" with absolute paths")
    if cfg.container_probe_timeout <= 0:
        raise ConfigError(f"field 'container_probe_timeout' must be more than 0, got {cfg.container_probe_timeout}")


def field_names() -> List[str]:
    return list(_FIELDS)
