"""The computing element's configuration: a YAML file, then command-line flags, declared to and loaded by
gridpilot.settings_loader (types, bounds, where a bad value was written; docs/configuration.md). A bad value is a
ConfigError naming the file and line (or the flag) and the field."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from gridpilot.ce import installs
from gridpilot.ce.backend import Resources
from gridpilot.ce.script import valid_variable_name
from gridpilot.client import PILOT_TOKEN_MAX_TTL_S
from gridpilot.endpoints import DEFAULT_CENTRAL_URL
from gridpilot.errors import ConfigError
from gridpilot.settings_loader import WORDS, Schema, Words, load, setting
from gridpilot.tls import CA_FILE_ENV, ca_context

BACKENDS = ("slurm", "htcondor", "local", "arc")
#: The keys of one resource shape; missing ones come from the queue defaults (cores, memory_mb, wall_time) or
#: are none (no GPUs; the CE's own arch; no Slurm constraint; slurm_partition).
SHAPE_KEYS = ("cores", "memory_mb", "wall_time", "gpus", "gpu_vendor", "gpu_model", "arch", "constraint", "partition")
#: Shape keys only Slurm understands.
SLURM_SHAPE_KEYS = ("constraint", "partition")
#: The keys of one ARC CE of the arc backend (ce/arc.py).
ARC_CE_KEYS = ("name", "url", "queue", "runtime_environments", "shapes")


@dataclass
class CESettings:
    """Sizes in MB, times in seconds."""

    central_url: str = setting(DEFAULT_CENTRAL_URL, doc="Central's URL.")
    token_file: Optional[str] = setting(None, doc="The CE token (role ce) in a file only the CE's user can read.")
    ca_file: Optional[str] = setting(
        factory=lambda: os.environ.get(CA_FILE_ENV) or None, env_default=CA_FILE_ENV, default_doc="unset",
        doc="The CA bundle (PEM) an https central is verified with; unset: the system's CA certificates. The pilots "
        "get its path too, so it must be there on the worker nodes (or set GRIDPILOT_CA_FILE in `environment` to "
        "where they have it).")
    site: Optional[str] = setting(None, doc="Unset: the site the token is bound to (checked against the token when "
                                  "given).")
    ce: Optional[str] = setting(None, doc="Unset: the CE the token is bound to (checked against the token when "
                                "given).")
    backend: str = setting("local", choices=BACKENDS, doc="The batch system pilots are submitted to.")
    max_queued: int = setting(10, minimum=1, doc="Pilots waiting in the batch queue, at most.")
    max_running: int = setting(50, minimum=1, doc="Pilots in the batch system at all (queued, running, held), at "
                               "most.")
    per_cycle: int = setting(5, minimum=1, doc="New pilots per cycle, at most.")
    max_queue_time: float = setting(
        3600.0, above=0, doc="A pilot still queued (or held, or suspended) this long after its submission is removed "
        "(and another submitted if work still waits).")
    startup_grace: float = setting(120.0, above=0, doc="A pilot that started less than this ago has not matched "
                                   "yet: it still counts against the waiting jobs.")
    cores: int = setting(1, minimum=1, doc="Queue default: cores per pilot (when no shape is configured).")
    memory_mb: int = setting(2000, minimum=1, doc="Queue default: memory per pilot in MB.")
    wall_time: int = setting(3600, minimum=1, doc="Queue default: wall time per pilot in seconds.")
    shapes: List[Dict[str, Any]] = setting(
        factory=list, keys=SHAPE_KEYS,
        doc="Resource shapes to probe central for and submit pilots of, missing keys taken from the queue defaults "
        "(no GPUs). Empty: one shape, the queue defaults. `arch` (x86_64, aarch64, riscv64; unset: the CE's): the "
        "arch its pilots offer and whose installation they run (the local backend: this machine's only); Slurm "
        "only: `constraint` (sbatch --constraint, node features) and `partition` (over slurm_partition) put them on "
        "nodes of that arch.")
    install_path: str = setting(sys.prefix, default_doc="the CE's own installation (`sys.prefix`)",
                                doc="The gridpilot installation the pilots run (`<path>/bin/gridpilot`), as a CVMFS "
                                "directory would hold it; `{arch}` in it is the shape's arch. Not with install_paths "
                                "or pilot_tree.")
    install_paths: Dict[str, str] = setting(
        factory=dict, doc="Several installations, by version (quoted in YAML: \"0.2.0\": /path): pilots run the "
        "pilot_version one; `{arch}` in a path is the shape's arch. The CE checks that each shape's exists.")
    pilot_tree: Optional[str] = setting(
        None, doc="A CVMFS tree as `make cvmfs-tree` lays it out, `<root>/<version>/<arch>/`: pilots run "
        "`<root>/<pilot_version>/<shape's arch>`, read again every cycle (a newly published version is taken "
        "without a restart). The CE must see the tree.")
    pilot_version: Optional[str] = setting(
        None, default_doc="latest", doc="The pilot version this site runs, independently of the CE's own: `latest` "
        "(the tree's `latest` link, else the highest version of install_paths or the tree) or a version "
        "(X.Y.Z). A pinned version missing for a shape's arch: that shape gets no pilot (logged, "
        "`gridpilot_ce_install_missing`), never another version's.")
    pilot_dir: str = setting(factory=lambda: os.path.join(os.environ.get("TMPDIR", "/tmp"), "gridpilot-ce"),
                             default_doc="`$TMPDIR/gridpilot-ce` (`/tmp` without TMPDIR)",
                             doc="Where each pilot's directory (script, token file, output) is made; on a filesystem "
                             "the nodes see.")
    pilot_workdir: Optional[str] = setting(None, doc="Root of the jobs' work directories on the node; unset: `work` "
                                           "in the pilot's directory.")
    pilot_user: Optional[str] = setting(None, doc="The user pilots run as (token file and directory are theirs); "
                                        "unset: the CE's own user.")
    environment: Dict[str, str] = setting(factory=dict, doc="Extra variables for the pilots (e.g. "
                                          "GRIDPILOT_MAX_EMPTY_MATCHES, X509 paths).")
    site_map: Dict[str, Any] = setting(factory=dict, doc="Extra site-map fields for the probe (platform, arch, "
                                       "partition, close_se, ...).")
    token_margin: float = setting(
        600.0, above=0, doc="The pilot token lives for the longest a pilot may wait in the queue, then its wall time, "
        "plus this.")
    cycle_interval: float = setting(60.0, above=0, doc="Seconds between cycles.")
    slurm_partition: Optional[str] = setting(None, doc="Slurm: the partition.")
    slurm_account: Optional[str] = setting(None, doc="Slurm: the account.")
    slurm_args: List[str] = setting(factory=list, split=WORDS, doc="Slurm: more sbatch arguments.")
    htcondor_schedd: Optional[str] = setting(None, doc="HTCondor: the schedd to submit to; unset: the local one.")
    htcondor_submit: Dict[str, str] = setting(factory=dict, doc="HTCondor: more submit-description lines.")
    arc_ces: List[Dict[str, Any]] = setting(
        factory=list, keys=ARC_CE_KEYS,
        doc="ARC: the ARC CEs pilots are submitted to (REST 1.0), each `name` (letters, digits and _ . -; in the "
        "pilots' batch ids), `url` (its A-REX endpoint, https://host:port/arex), optionally `queue`, "
        "`runtime_environments` (a list) and `shapes` (as `shapes`; unset: `shapes`). A shape several CEs offer "
        "goes to the one with fewest pilots of this CE that is not backed off.")
    arc_cert: Optional[str] = setting(None, doc="ARC: the client certificate (PEM) the CE presents to the ARC CEs.")
    arc_key: Optional[str] = setting(None, doc="ARC: its private key (PEM), readable by its owner only (0600).")
    arc_ca_dir: Optional[str] = setting(
        None, doc="ARC: the directory of CA certificates (hashed, as /etc/grid-security/certificates) the ARC CEs' "
        "host certificates are verified with.")
    arc_ca_file: Optional[str] = setting(None, doc="ARC: a CA bundle (PEM) instead of, or besides, arc_ca_dir.")
    arc_token_file: Optional[str] = setting(
        None, doc="ARC: a bearer token (in a file only the CE's user can read) for ARC CEs that take tokens, "
        "instead of arc_cert and arc_key.")
    arc_timeout: float = setting(60.0, above=0, doc="ARC: seconds one REST call may take before the ARC CE counts "
                                 "as not answering.")
    arc_backoff: float = setting(
        60.0, above=0, doc="ARC: an ARC CE that refuses a submission or does not answer gets nothing for this long, "
        "then twice as long at each failure in a row, up to arc_backoff_max; pilots go to the other CEs meanwhile.")
    arc_backoff_max: float = setting(1800.0, above=0, doc="ARC: the longest back-off of an ARC CE.")
    arc_diagnose_max: int = setting(
        50, minimum=0, doc="ARC: while an ARC CE holds at most this many unfinished pilots of this CE, each is "
        "asked its live state (one GET diagnose/status per pilot per cycle); above, the bulk status (one POST, "
        "lagging 40-60 s behind) is enough, and only the pilots it does not list yet are asked.")
    log_level: str = setting("INFO", doc="The CE's log level.")
    central_backoff_max: float = setting(
        15.0, above=0, doc="While central is unreachable, the longest wait between two tries (they start at 1 s and "
        "double, with jitter). A site has a few CEs and each try is one GET /health: a short cap costs central "
        "nothing and bounds how late a CE resumes after an outage.")
    central_down_log_interval: float = setting(600.0, above=0, doc="While central is unreachable, how often to log "
                                               "that it still is.")
    metrics_port: Optional[int] = setting(
        None, doc="Serve the CE's Prometheus /metrics on this port (0 to 65535; 0: any free one, said at start); "
        "unset: not at all. Needs prometheus_client (pip install 'gridpilot[ce]').")
    metrics_address: str = setting("127.0.0.1", doc="The address metrics_port listens on.")

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
        return sorted(set(self.resource_shapes_as_written()))

    def resource_shapes_as_written(self) -> List[Resources]:
        """The shapes in the order of `shapes` (so that shapes[i] names the one at fault); the arc backend's
        are those of its ARC CEs, in their order."""
        if self.backend == "arc" and self.arc_ces:
            return [shape for i in range(len(self.arc_ces)) for shape in self.arc_ce_shapes(i)]
        return [self._shape(i, s) for i, s in enumerate(self.shapes or [{}])]

    def arc_ce_shapes(self, i: int) -> List[Resources]:
        """The shapes ARC CE arc_ces[i] takes pilots of: its own `shapes`, else the CE's."""
        own = self.arc_ces[i].get("shapes")
        if not own:
            return [self._shape(j, s) for j, s in enumerate(self.shapes or [{}])]
        if not isinstance(own, list) or not all(isinstance(s, Mapping) for s in own):
            raise ConfigError(f"field 'arc_ces[{i}].shapes' must be a list of shapes (mappings)")
        out = []
        for j, s in enumerate(own):
            unknown = sorted(set(s) - set(SHAPE_KEYS))
            if unknown:
                raise ConfigError(f"field 'arc_ces[{i}].shapes[{j}]': unknown key {unknown[0]!r} (a shape has "
                                  f"{', '.join(SHAPE_KEYS)})")
            try:
                out.append(self._shape(j, s))
            except ConfigError as e:
                raise ConfigError(str(e).replace("field 'shapes[", f"field 'arc_ces[{i}].shapes[")) from None
        return out

    def source_of_installations(self) -> str:
        """install_path, install_paths or pilot_tree: the one setting the pilots' installations come from."""
        return self.installations().source

    def installations(self) -> installs.Installations:
        """Where the pilots' gridpilot is, per version and arch (ce/installs.py)."""
        return installs.Installations(install_path=self.install_path, install_paths=self.install_paths,
                                      pilot_tree=self.pilot_tree, pilot_version=self.pilot_version)

    def _shape(self, i: int, s: Mapping[str, Any]) -> Resources:
        try:
            return Resources(cores=s.get("cores", self.cores), memory_mb=s.get("memory_mb", self.memory_mb),
                             wall_s=s.get("wall_time", self.wall_time), gpus=s.get("gpus", 0),
                             gpu_vendor=s.get("gpu_vendor", ""), gpu_model=s.get("gpu_model", ""),
                             arch=s.get("arch", ""), constraint=s.get("constraint", ""),
                             partition=s.get("partition", ""))
        except ValueError as e:
            raise ConfigError(f"field 'shapes[{i}]': {e}") from None

    def pilot_token_ttl(self, wall_s: int) -> float:
        """How long the agent token of a pilot with this wall time must live: the longest it may wait in the queue
        (max_queue_time, and up to a cycle more before the CE sees it and removes it), then its whole wall time
        (the runner starts the clock of its slot when it starts), then token_margin."""
        return self.max_queue_time + self.cycle_interval + wall_s + self.token_margin


SCHEMA = Schema(CESettings, "CE configuration", words=Words(integer="a whole number", at_least="at least {bound}"))


def load_settings(path: Optional[Union[str, Path]] = None, overrides: Optional[Mapping[str, Any]] = None) -> CESettings:
    """The file's values, then the flags (None: not given); checked as a whole. GRIDPILOT_CA_FILE is ca_file's
    default."""
    loaded = load(SCHEMA, path, overrides=overrides)
    s: CESettings = loaded.value
    at = loaded.at
    if not s.central_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at('central_url')}: field 'central_url' must start with http:// or https://, "
                          f"got {s.central_url!r}")
    if s.metrics_port is not None and not 0 <= s.metrics_port <= 65535:
        raise ConfigError(f"{at('metrics_port')}: field 'metrics_port' must be a port number from 0 to 65535, "
                          f"got {s.metrics_port}")
    if not s.metrics_address.strip():
        raise ConfigError(f"{at('metrics_address')}: field 'metrics_address' must be an address to listen on")
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
        if s.backend != "slurm":
            for k in SLURM_SHAPE_KEYS:
                if k in raw:
                    raise ConfigError(f"{at('shapes', i)}: field 'shapes[{i}].{k}': only the slurm backend places "
                                      f"pilots by {k} (backend is {s.backend})")
        if s.backend == "local" and raw.get("arch") and raw["arch"] != platform.machine():
            # A forked pilot runs on this machine and offers its CPU: it could never run the jobs the shape asks
            # central for, and the CE would keep submitting pilots for them.
            raise ConfigError(f"{at('shapes', i)}: field 'shapes[{i}].arch': the local backend forks pilots on this "
                              f"machine ({platform.machine()}), not on {raw['arch']} nodes")
    if s.backend == "arc":
        _check_arc(s, at)
    _check_installations(s, at)
    if s.ca_file:
        s.ca_file = os.path.abspath(os.path.expanduser(s.ca_file))  # the pilots start elsewhere
        try:
            ca_context(s.ca_file)
        except ConfigError as e:
            raise ConfigError(f"{at('ca_file')}: field 'ca_file': {e}") from None
    _check_token_life(s, at)
    return s


def _check_installations(s: CESettings, at: Callable[..., str]) -> None:
    """One source of installations, a pin that names a version, and for install_paths and pilot_tree an installation
    of the pinned version for every shape's arch, checked now: a bad configuration is named with its field before
    anything is submitted (while running, what goes missing is logged and that shape skipped, see factory.py)."""
    given = [n for n in ("install_paths", "pilot_tree") if getattr(s, n)]
    if at("install_path") != "default":
        given.insert(0, "install_path")
    if len(given) > 1:
        raise ConfigError(f"{at(given[1])}: field '{given[1]}': give one of install_path, install_paths and "
                          f"pilot_tree, not {' and '.join(given)}")
    if s.pilot_version is not None and s.pilot_version != installs.LATEST and not installs.valid_version(s.pilot_version):
        raise ConfigError(f"{at('pilot_version')}: field 'pilot_version' must be 'latest' or a version such as 1.2.3 "
                          f"(a digit, then at most 63 letters, digits and . + _ -), got {s.pilot_version!r}")
    if s.pilot_version not in (None, installs.LATEST) and s.source_of_installations() == "install_path":
        raise ConfigError(f"{at('pilot_version')}: field 'pilot_version': pinning a version needs install_paths or "
                          "pilot_tree (install_path is one installation, of whatever version it holds)")
    for version, path in s.install_paths.items():
        if not installs.valid_version(version):
            raise ConfigError(f"{at('install_paths', version)}: field 'install_paths': {version!r} is not a version "
                              "(a digit, then at most 63 letters, digits and . + _ -)")
        if not os.path.isabs(path):
            raise ConfigError(f"{at('install_paths', version)}: field 'install_paths[{version}]': {path!r} is not an "
                              "absolute path (the pilots start elsewhere)")
    if s.pilot_tree is not None:
        if not os.path.isabs(s.pilot_tree):
            raise ConfigError(f"{at('pilot_tree')}: field 'pilot_tree': {s.pilot_tree!r} is not an absolute path")
        if not os.path.isdir(s.pilot_tree):
            raise ConfigError(f"{at('pilot_tree')}: field 'pilot_tree': {s.pilot_tree} is not a directory here (the CE "
                              "reads the tree to know its versions: mount it on the CE too)")
    if s.source_of_installations() == "install_path":
        return
    found = s.installations()
    for i, shape in enumerate(s.resource_shapes_as_written()):
        try:
            found.resolve(shape.arch or None)
        except installs.MissingInstall as e:
            if e.field == "arch" and shape.arch:
                field_name, where = f"shapes[{i}].arch", at("shapes", i)
            elif e.field == "arch" and s.install_paths and e.version:
                field_name, where = f"install_paths[{e.version}]", at("install_paths", e.version)
            else:
                field_name = "pilot_version" if e.field == "pilot_version" else s.source_of_installations()
                where = at(field_name)
            raise ConfigError(f"{where}: field '{field_name}': {e}") from None


def _check_arc(s: CESettings, at: Callable[..., str]) -> None:
    """The arc backend's ARC CEs and credentials, named with their field before anything is submitted (ce/arc.py
    checks the files themselves: the key's mode, the certificates' presence)."""
    from gridpilot.ce import arc  # the names and words of ARC live there; arc.py needs no settings

    if not s.arc_ces:
        raise ConfigError(f"{at('backend')}: field 'arc_ces': the arc backend needs at least one ARC CE "
                          "(name and url)")
    names = set()
    for i, raw in enumerate(s.arc_ces):
        where = at("arc_ces", i)
        try:
            ce = arc.arc_ce_from_settings(raw, s.arc_ce_shapes(i))
        except (ConfigError, ValueError) as e:
            text = str(e)
            if not text.startswith("field 'arc_ces["):  # arc.py names the item's own field: name it in the list
                text = text.replace("field '", f"field 'arc_ces[{i}].", 1) if text.startswith("field '") \
                    else f"field 'arc_ces[{i}]': {text}"
            raise ConfigError(f"{where}: {text}") from None
        if ce.name in names:
            raise ConfigError(f"{where}: field 'arc_ces[{i}].name': {ce.name!r} names two ARC CEs")
        names.add(ce.name)
        for j, shape in enumerate(raw.get("shapes") or []):
            for k in SLURM_SHAPE_KEYS:
                if k in shape:
                    raise ConfigError(f"{where}: field 'arc_ces[{i}].shapes[{j}].{k}': only the slurm backend "
                                      f"places pilots by {k} (an ARC CE places them by its queue)")
    if s.pilot_user is not None:
        raise ConfigError(f"{at('pilot_user')}: field 'pilot_user': an ARC CE runs pilots as the local user it maps "
                          "the CE's certificate to; leave pilot_user unset with the arc backend")
    if bool(s.arc_cert) != bool(s.arc_key):
        missing = "arc_key" if s.arc_cert else "arc_cert"
        raise ConfigError(f"{at(missing)}: field '{missing}': arc_cert and arc_key go together")
    if s.arc_token_file is None and not s.arc_cert:
        raise ConfigError(f"{at('arc_cert')}: field 'arc_cert': the arc backend needs a client certificate and "
                          "key (arc_cert, arc_key) or a token (arc_token_file)")
    for name in ("arc_cert", "arc_key", "arc_ca_dir", "arc_ca_file", "arc_token_file"):
        value = getattr(s, name)
        if value is not None and not os.path.isabs(value):
            raise ConfigError(f"{at(name)}: field '{name}': {value!r} is not an absolute path")


def _check_token_life(s: CESettings, at: Callable[..., str]) -> None:
    """Refuse a configuration whose pilots would need a longer-lived agent token than central mints: each of them
    would be refused at submission, or would lose its token mid-job."""
    walls = [(raw.get("wall_time", s.wall_time), i) for i, raw in enumerate(s.shapes or [{}])]
    if s.backend == "arc":
        walls += [(shape.wall_s, -1) for shape in s.resource_shapes_as_written()]
    wall, i = max(walls, key=lambda w: w[0])
    need = s.pilot_token_ttl(wall)
    if need <= PILOT_TOKEN_MAX_TTL_S:
        return
    if i == -1:
        where, field_name = at("arc_ces"), "arc_ces"
    elif s.shapes and "wall_time" in s.shapes[i]:
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


__all__ = ["ARC_CE_KEYS", "BACKENDS", "CESettings", "SHAPE_KEYS", "load_settings"]
