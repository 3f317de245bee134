"""Pilot configuration: a YAML file, then `GRIDPILOT_*` environment variables, then command-line flags.

Each layer overrides the one before. The fields are declared to gridpilot.settings_loader, which loads and checks
them (types, bounds, where a bad value was written) with the rules every gridpilot configuration follows, and from
which docs/configuration.md is written (tools/configuration_docs.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Union

from gridpilot import settings_loader
from gridpilot.endpoints import DEFAULT_CENTRAL_URL, default_state_dir, url_from_state_dir
from gridpilot.errors import ConfigError
from gridpilot.settings_loader import PATHS, WORDS, Loaded, Schema, load, setting
from gridpilot.tls import ca_context

ENV_PREFIX = "GRIDPILOT_"
#: The container runtimes a configuration may name (python/gridpilot/isolation/runtimes/), in the default order.
CONTAINER_RUNTIMES = ("apptainer-cvmfs", "apptainer", "singularity", "podman", "bwrap")


@dataclass
class PilotConfig:
    """What a JobRunner and its JobAgents need to know. Sizes in MB, times in seconds."""

    central_url: Optional[str] = setting(
        None, default_doc="see the text", doc="Central's URL. Unset: the URL `central serve` wrote into the state "
        "directory (central.url), else " + DEFAULT_CENTRAL_URL + "; a loaded configuration always has one.")
    state_dir: Optional[str] = setting(
        None, default_doc="`$GRIDPILOT_STATE_DIR`, else `~/.local/state/gridpilot`",
        doc="Where to look for central.url.")
    token: Optional[str] = setting(None, doc="The agent token itself; prefer token_file.")
    token_file: Optional[str] = setting(None, doc="A file holding the agent token, readable only by the pilot's user.")
    ca_file: Optional[str] = setting(
        None, doc="The CA bundle (PEM) an https central's certificate is verified with; unset: the system's CA "
        "certificates.")
    site: Optional[str] = setting(
        None, doc="Unset: the site the agent token is bound to (the runner asks central at start-up). A value that "
        "disagrees with the token is a configuration error: central would refuse every match.")
    ce: Optional[str] = setting(None, doc="Unset: the CE the agent token is bound to (as site).")
    partition: str = setting("", doc="The partition this slot belongs to, matched against the jobs' requirements.")
    node: str = setting(factory=lambda: os.uname().nodename, default_doc="this host's name",
                        doc="The node's name, as central shows it.")
    workdir: str = setting(factory=lambda: os.path.join(os.environ.get("TMPDIR", "/tmp"), "gridpilot-work"),
                           default_doc="`$TMPDIR/gridpilot-work` (`/tmp` without TMPDIR)",
                           doc="Root of the jobs' work directories.")
    slot_ttl: Optional[float] = setting(None, doc="Seconds this slot may run; unset: until told to stop.")
    cores: Optional[int] = setting(None, minimum=1,
                                   doc="Cores of this slot; unset: from the batch system or the CPUs this process "
                                   "may run on.")
    memory_mb: Optional[int] = setting(None, doc="Memory of this slot in MB; unset: from the batch system or the "
                                       "node.")
    disk_mb: Optional[int] = setting(None, doc="Disk of this slot in MB; unset: what the work directory has free.")
    match_backoff: float = setting(
        5.0, above=0, doc="Seconds to wait after an empty match (doubled up to match_backoff_max, with jitter). The "
        "same backoff paces the tries while central is unreachable, which are not empty matches.")
    match_backoff_max: float = setting(120.0, above=0, doc="The longest wait between two matches.")
    max_empty_matches: int = setting(10, minimum=1, doc="Empty matches in a row (with nothing running) that end "
                                     "the runner.")
    startup_window: float = setting(
        300.0, above=0, doc="How long the runner tries to reach central at start-up before it gives up (exit "
        "CENTRAL_UNREACHABLE). Once it has started, it rides out an outage of any length until the slot's end.")
    heartbeat_interval: float = setting(60.0, doc="Seconds between an agent's heartbeats to central.")
    kill_poll_interval: float = setting(
        3.0, minimum=0.0, maximum=60.0, note="0: no poll, a kill is learned at the next heartbeat",
        doc="Seconds between a JobAgent's control polls of central between two heartbeats: a read of one row that "
        "asks only whether the job is to be killed, so that `gridpilot kill` takes effect within seconds. With "
        "bulk_heartbeats the JobRunner polls once for all of its jobs. The floor: on a large grid central asks for "
        "longer gaps (its --control-poll-rate, docs/scaling.md), never longer than heartbeat_interval.")
    bulk_heartbeats: bool = setting(
        True, doc="The JobRunner sends one heartbeat per heartbeat_interval and one control poll per "
        "kill_poll_interval for all of its jobs (the first heartbeat at a random point of the first interval); "
        "false: each JobAgent sends its own, as pilots before it did (docs/scaling.md).")
    monitor_fast_s: float = setting(1.0, doc="Seconds between the monitor's fast-tier samples.")
    monitor_slow_s: float = setting(60.0, doc="Seconds between the monitor's slow-tier samples.")
    monitor_medium_s: float = setting(
        15.0, doc="The monitor's medium tier: network bytes (a job with its own network namespace) and GPU use (a "
        "job with GPUs).")
    proc_trace_interval: float = setting(600.0, doc="Seconds between the process-tree entries in the job's trace.")
    watchdog_interval: float = setting(
        30.0, minimum=0.5, maximum=600.0, doc="The longest a JobAgent's monitoring loop waits between two turns; each "
        "turn tells the runner's watchdog that the loop is alive (docs/pilot.md, \"The watchdog\").")
    watchdog_stall_intervals: int = setting(
        10, minimum=2, maximum=1000, doc="The runner's watchdog reports a JobAgent's monitoring loop that has not "
        "turned for more than this many watchdog_interval: a line in the job's trace (\"the monitoring loop has been "
        "stalled for N s\") and a failure counted against the node at central (nodeBad).")
    idle_window_s: float = setting(
        900.0, doc="The idle rule's window: a payload using under 10% of its cores' time for this long is killed "
        "(IDLE_CPU).")
    cgroups: str = setting("auto", choices=("auto", "off"),
                           doc="The slot cgroup tree: `auto` builds it where the cgroup is writable, `off` never.")
    cgroup_limits: bool = setting(
        True, doc="Kernel limits on each job's cgroup (memory.max/high, swap, cpu.max, pids.max; v1 equivalents on "
        "hybrid hosts), where the controllers are delegated: see gridpilot/isolation/limits.py for the numbers.")
    pids_max: int = setting(4096, minimum=0, note="0: no limit",
                            doc="pids.max of a job's cgroup (threads count too); 0: no limit.")
    swap_mb: int = setting(0, minimum=0, doc="Swap a job may use (memory.swap.max, or v1 memsw minus memory); 0: none.")
    sysfs: str = setting("/sys", doc="Where sysfs is (the node's CPUs and GPUs are read there).")
    pci_ids: Optional[str] = setting(
        None, doc="The pci.ids database that names the node's GPUs (their model in the site map); unset: the usual "
        "places (/usr/share/misc/pci.ids from pciutils, /usr/share/hwdata/pci.ids from hwdata). Without one, GPUs "
        "still count, by vendor and PCI id, but jobs asking for a GPU model do not match here.")
    close_se: List[str] = setting(factory=list, doc="The storage elements close to this node, closest first (names "
                                  "central knows): outputs go there. Required.")
    users: List[str] = setting(factory=list, doc="Only these users' jobs run here; empty: anyone's.")
    nousers: List[str] = setting(factory=list, doc="These users' jobs never run here.")
    keep_workdir: bool = setting(False, doc="Keep each job's work directory after the job (for debugging).")
    drain_grace: float = setting(120.0, doc="The agent gives the wrapper this long, after SIGTERM from the batch "
                                 "system, to upload outputs.")
    ttl_upload_grace: float = setting(
        3600.0, minimum=1, maximum=21600, doc="After the JobAgent kills a payload for a broken limit (its TTL, "
        "memory, disk...), the JobWrapper uploads the job's outputs that exist and its logs within this many seconds, "
        "then is killed: ALICE's one hour. The job still ends ERROR_E with the limit as kill reason. At most 6 h, well "
        "inside the job token's one-day margin over the TTL (docs/pilot.md, \"After a kill\").")
    report_grace: float = setting(
        600.0, doc="How long an agent whose job has ended keeps trying to deliver the job's last reports (its final "
        "state among them) while central is unreachable. Central's own timeout turns a silent job ZOMBIE after an "
        "hour.")
    container_runtime: str = setting(
        "auto", doc="`auto` probes the runtimes in container_order and uses the first that works with the job's "
        "image; a runtime name forces that one; `none` runs without a container (PID namespace only: "
        "pid_namespace).")
    container_order: List[str] = setting(
        factory=lambda: list(CONTAINER_RUNTIMES),
        doc="The runtimes `auto` tries, in order: " + ", ".join(CONTAINER_RUNTIMES) + ".")
    require_container: bool = setting(False, doc="A node with no working runtime refuses to match (and says why) "
                                      "instead of running jobs uncontained.")
    arch_override: Optional[str] = setting(
        None, doc="The node's architecture as the pilot offers it to central (x86_64, aarch64, riscv64, ppc64le; "
        "amd64 and arm64 are aliases), instead of the CPU's: ALICE's option for a node whose architecture is "
        "misdetected or that runs another architecture's binaries (emulation). The broker then gives it only jobs "
        "of that architecture, and neither the CPU's x86-64 level nor its features are offered. Said at start in "
        "the pilot's log and in each job's trace.")
    images_dir: Optional[str] = setting(
        None, doc="Image directories named <os><major>[.<minor>][-<arch>][-<tag>] (el9-x86_64, el9.4-x86_64-2024.06), "
        "chosen by the job's Platform.")
    default_image: Optional[str] = setting(None, doc="The image (a path, or a name in images_dir) for a job whose "
                                           "Platform chooses none.")
    site_image: Optional[str] = setting(None, doc="An image every job runs in, whatever its Platform.")
    container_binds: List[str] = setting(
        factory=list, split=PATHS,
        doc="Extra binds into the container, each `src[:dst[:ro|rw]]` (dst defaults to src, mode to ro).")
    apptainer_cvmfs_path: str = setting("/cvmfs/alice.cern.ch/containers/bin/apptainer/current/bin",
                                        doc="Where the ALICE CVMFS repository keeps its Apptainer (the "
                                        "`apptainer-cvmfs` runtime).")
    pid_namespace: bool = setting(True, doc="Without a container, run the JobWrapper in its own PID namespace "
                                  "(`unshare`), so `kill -9 -1` cannot reach the pilot.")
    container_probe_timeout: float = setting(60.0, above=0, doc="Seconds a runtime gets to run the probe command "
                                             "in the image before it counts as not working.")
    stdout_max_mb: int = setting(
        1024, minimum=0, note="0: no cap", doc="The JobWrapper keeps this many MB of each of the payload's stdout "
        "and stderr and throws the rest away (traced), so a payload flooding its output cannot fill the node's disk "
        "through it. 0: no cap.")

    packages_command: List[str] = setting(
        factory=lambda: ["/cvmfs/alice.cern.ch/bin/alienv", "printenv"], split=WORDS,
        doc="The command that prints the environment of a job's `Packages` as shell code (`alienv printenv`, "
        "`modulecmd sh load`), run by the JobWrapper where the payload runs (inside its container) with the packages "
        "as its last argument(s), `VO_ALICE@Name::Version` given as `Name/Version`; see docs/packages.md. Empty: "
        "`Packages` are not set up here (traced).")
    packages_arguments: str = setting(
        "joined", choices=("joined", "separate"),
        doc="How the packages are handed to packages_command: `joined` by commas into one argument (alienv's "
        "`A/v1,B/v2`), or each as an argument of its own (`modulecmd sh load A/v1 B/v2`).")
    packages_timeout: float = setting(
        300.0, above=0, maximum=3600, doc="Seconds packages_command (and the shell that evaluates what it prints) may "
        "take before the job ends ERROR_E with kill reason PACKAGES.")

    def agent_token(self) -> str:
        if self.token:
            return self.token
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"token_file {self.token_file}: {e.strerror}") from e
        raise ConfigError("no agent token: set token_file (or token) in the configuration, GRIDPILOT_TOKEN_FILE, or --token-file")


SCHEMA = Schema(PilotConfig, "configuration", env_prefix=ENV_PREFIX, file_env=ENV_PREFIX + "CONFIG")


def load_config(
    path: Optional[Union[str, Path]] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> PilotConfig:
    """Build the configuration from the three layers. `overrides` are the flags (None values are "not given")."""
    env = os.environ if environ is None else environ
    loaded = load(SCHEMA, path, environ=env, overrides=overrides)
    cfg: PilotConfig = loaded.value
    cfg.central_url = resolve_central_url(cfg.central_url, cfg.state_dir, env)
    if not cfg.central_url.startswith(("http://", "https://")):
        where = loaded.at("central_url")
        raise ConfigError(f"{where + ': ' if where != 'default' else ''}field 'central_url' must start with http:// or "
                          f"https://, got {cfg.central_url!r}")
    _check_containers(cfg, loaded)
    _check_arch(cfg, loaded)
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


def _check_arch(cfg: PilotConfig, loaded: Loaded) -> None:
    if cfg.arch_override is None:
        return
    from gridpilot.jdl.platform import KNOWN_ARCHES, normalise_arch

    arch = normalise_arch(cfg.arch_override.strip().lower())
    if arch is None:
        raise ConfigError(f"{loaded.at('arch_override')}: field 'arch_override' must be one of "
                          f"{', '.join(KNOWN_ARCHES)}, got {cfg.arch_override[:40]!r}")
    cfg.arch_override = arch


def _check_containers(cfg: PilotConfig, loaded: Loaded) -> None:
    known = ", ".join(CONTAINER_RUNTIMES)
    if cfg.container_runtime not in ("auto", "none", *CONTAINER_RUNTIMES):
        raise ConfigError(f"{loaded.at('container_runtime')}: field 'container_runtime' must be 'auto', 'none' or "
                          f"one of {known}, got {cfg.container_runtime!r}")
    for i, name in enumerate(cfg.container_order):
        if name not in CONTAINER_RUNTIMES:
            raise ConfigError(f"{loaded.at('container_order', i)}: field 'container_order' names an unknown runtime "
                              f"{name!r} (known: {known})")
    for i, bind in enumerate(cfg.container_binds):
        parts = bind.split(":")
        if not parts[0].startswith("/") or len(parts) > 3 or (len(parts) > 1 and not parts[1].startswith("/")) \
                or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ConfigError(f"{loaded.at('container_binds', i)}: field 'container_binds': {bind!r} is not "
                              "\"src[:dst[:ro|rw]]\" with absolute paths")


def field_names() -> List[str]:
    return settings_loader.field_names(SCHEMA)
