"""The tower's configuration: a YAML file, then `GRIDPILOT_TOWER_*` variables, then flags, declared to and loaded by
gridpilot.settings_loader (docs/configuration.md). A bad value is a ConfigError naming where it was written and the
field; a site entry's key is named as `sites[i].key`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from gridpilot import private_files
from gridpilot.endpoints import DEFAULT_CENTRAL_URL
from gridpilot.errors import ConfigError
from gridpilot.settings_loader import Loaded, Schema, load, setting
from gridpilot.tls import CA_FILE_ENV

#: The keys of one site entry.
SITE_KEYS = ("site", "token_file", "arc_ces", "install_path", "site_map", "output_ses", "arc_staging", "queue")
#: Storage URL schemes an ARC CE can fetch from itself (its data staging); file:// is the tower's own disk.
ARC_STAGING_SCHEMES = ("root://", "https://", "http://")
#: At most this many ARC CEs per site, and sites per tower: each is polled every cycle.
MAX_ARC_CES = 50
MAX_SITES = 200


@dataclass(frozen=True)
class SiteConfig:
    """One no-network site the tower serves."""

    #: The site's name, as the token is bound to it.
    site: str
    token_file: str
    #: REST 1.0 URLs of the site's ARC CEs (https://host:port/arex/rest/1.0), tried in this order.
    arc_ces: Tuple[str, ...]
    #: The gridpilot installation on the site's nodes (`<install_path>/bin/gridpilot`), as CVMFS holds it there.
    install_path: str
    #: The site map sent with each match (the nodes' resources: ttl, cores, memory_mb, disk_mb, arch, ...).
    site_map: Mapping[str, Any]
    #: Where outputs go, in order, before central's storage elements close to the site.
    output_ses: Tuple[str, ...]
    #: Inputs on a storage element the ARC CE can reach (root://, http(s)://) are given to ARC as URLs to stage
    #: itself, instead of being fetched by the tower and uploaded into the session.
    arc_staging: bool
    #: The ARC queue (xRSL `queue`); empty: the CE's default.
    queue: str

    def token(self) -> str:
        return read_token(self.token_file)


@dataclass
class TowerSettings:
    """Times in seconds."""

    central_url: str = setting(DEFAULT_CENTRAL_URL, doc="Central's URL.")
    ca_file: Optional[str] = setting(
        factory=lambda: os.environ.get(CA_FILE_ENV) or None, env_default=CA_FILE_ENV, default_doc="unset",
        doc="The CA bundle (PEM) an https central is verified with; unset: the system's CA certificates.")
    state_dir: str = setting(
        factory=lambda: os.path.join(os.environ.get("TMPDIR", "/tmp"), "gridpilot-tower"),
        default_doc="`$TMPDIR/gridpilot-tower`",
        doc="The tower's database (tower.sqlite) and each job's files while it holds them; on a local disk.")
    name: str = setting(factory=lambda: f"tower@{os.uname().nodename}", default_doc="`tower@<host>`",
                        doc="This tower's name, as the node in the site maps it matches with.")
    sites: List[Dict[str, Any]] = setting(
        factory=list, keys=SITE_KEYS,
        doc="The no-network sites served: `site` (the name its tower token is bound to), `token_file` (that token, "
        "mode 0600), `arc_ces` (REST 1.0 URLs of its ARC CEs, in order), `install_path` (gridpilot on its nodes), "
        "`site_map` (its nodes' resources: ttl, cores, memory_mb, ..., and pilot_version, the version of its "
        "install_path, by default the tower's own), `output_ses` (storage elements for outputs, "
        "before central's close ones), `arc_staging` (true: inputs on root:// or http(s):// storage are staged by "
        "ARC itself), `queue` (the ARC queue).")
    arc_cert: Optional[str] = setting(None, doc="The tower's X.509 certificate (PEM) for the ARC CEs.")
    arc_key: Optional[str] = setting(None, doc="Its key (PEM, readable by the tower's user only: mode 0600).")
    arc_ca_dir: Optional[str] = setting(None, doc="The CA directory the ARC CEs' certificates are verified with.")
    arc_ca_file: Optional[str] = setting(None, doc="Or a CA bundle (PEM) for them.")
    arc_token_file: Optional[str] = setting(None, doc="A bearer token for ARC CEs that take one (mode 0600).")
    arc_timeout: float = setting(60.0, above=0, doc="One request to an ARC CE, at most.")
    log_se: Optional[str] = setting(
        None, doc="Where pilot logs are published: a storage URL (file:// or root://) under which each job's log "
        "goes as `<job id>/<resubmission>/gridpilot-offline.log`; unset: `file://<state_dir>/logs`.")
    log_url_base: Optional[str] = setting(
        None, doc="The http(s) URL log_se is served at (a web server over that area); unset: the log's storage URL "
        "itself is what central gets.")
    max_jobs: int = setting(100, minimum=1, doc="Jobs held per site at once (matched, not yet reported and cleaned).")
    match_per_cycle: int = setting(20, minimum=1, doc="Jobs matched per site and cycle, at most.")
    submit_batch: int = setting(50, minimum=1, maximum=1000, doc="Jobs per ARC submission request (one POST).")
    lost_resubmits: int = setting(2, minimum=0, doc="An ARC job the CE lost (404) is submitted again this many "
                                  "times, then the job is given back to central.")
    submit_deadline: float = setting(
        900.0, above=0, doc="A job no ARC CE took within this long of its match (all refusing or backed off) is "
        "given back to central (WAITING).")
    ce_backoff_base: float = setting(30.0, above=0, doc="An ARC CE that refused or timed out is left alone this "
                                     "long, doubled each time in a row, up to ce_backoff_max.")
    ce_backoff_max: float = setting(1800.0, above=0, doc="The longest an ARC CE is backed off.")
    poll_interval: float = setting(30.0, minimum=0, doc="Each ARC job's state is asked at most this often.")
    bulk_status: bool = setting(
        True, doc="Follow the ARC jobs of a CE with one `action=status` request per cycle (the info provider's "
        "state, up to a minute late) and ask a job's live state (diagnose/status, one request per job) only when "
        "that one says it ended, does not list it, or diagnose_interval has passed; false: the live state of "
        "every job at every poll (sooner, one request per job).")
    diagnose_interval: float = setting(300.0, above=0, doc="With bulk_status, each ARC job's live state is asked "
                                       "at least this often all the same.")
    heartbeat_interval: float = setting(
        60.0, above=0, doc="Each held job's heartbeat to central at least this often (central turns a silent held "
        "job ZOMBIE after its zombie_after_s). Its answers carry central's kills, so this is also how soon a kill "
        "reaches the node; the heartbeats go in bulk, so 10,000 held jobs at 60 s are ~170 updates/s at central.")
    kill_grace: float = setting(
        120.0, minimum=10.0, maximum=3600.0,
        doc="Central's kill is carried out by the node: the tower puts kill.request into the ARC job's session, and "
        "the offline runner ends the job as a pilot would (docs/offline.md). An ARC job that has not ended this "
        "many seconds beyond the job's ForcedKillTimeout after the request (the runner never started, hangs, or "
        "the file was removed) is killed through ARC instead, and the job reported KILLED; with a fork LRMS that "
        "kill may leave the payload running. Leave room for the LRMS's own scan and poll_interval.")
    report_batch: int = setting(500, minimum=1, maximum=1000, doc="Reports per POST /api/v1/reports.")
    cycle_interval: float = setting(30.0, above=0, doc="Seconds between cycles.")
    keep_finished: bool = setting(False, doc="Keep each job's local directory after it was reported and cleaned.")
    log_level: str = setting("INFO", doc="The tower's log level.")

    def database(self) -> Path:
        return Path(self.state_dir) / "tower.sqlite"

    def site_configs(self) -> List[SiteConfig]:
        return [_site(i, raw) for i, raw in enumerate(self.sites)]


SCHEMA = Schema(TowerSettings, "tower configuration", env_prefix="GRIDPILOT_TOWER_")


def read_token(path: str) -> str:
    """A token from a file only its owner may read."""
    check_private(path, "token file")
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"token file {path}: {e.strerror}") from e
    if not text:
        raise ConfigError(f"token file {path} is empty")
    return text


def check_private(path: str, what: str) -> None:
    """Refuse a secret readable by group or others, naming it (a key or token there is as good as published)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror}") from e
    problem = private_files.exposure(mode)
    if problem:
        raise ConfigError(f"{what} {path} {problem}")


def _site(i: int, raw: Mapping[str, Any]) -> SiteConfig:
    where = f"field 'sites[{i}]"

    def text(key: str, required: bool = True) -> str:
        v = raw.get(key)
        if v is None and not required:
            return ""
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{where}.{key}' must be a non-empty string, got {v!r}")
        return v.strip()

    def texts(key: str) -> Tuple[str, ...]:
        v = raw.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ConfigError(f"{where}.{key}' must be a list of non-empty strings, got {v!r}")
        return tuple(x.strip() for x in v)

    ces = texts("arc_ces")
    if not ces:
        raise ConfigError(f"{where}.arc_ces' must name at least one ARC CE")
    if len(ces) > MAX_ARC_CES:
        raise ConfigError(f"{where}.arc_ces' names {len(ces)} ARC CEs, at most {MAX_ARC_CES}")
    for j, url in enumerate(ces):
        if not url.startswith("https://"):
            raise ConfigError(f"{where}.arc_ces[{j}]' must be an https:// REST URL, got {url!r}")
    install = text("install_path")
    if not install.startswith("/"):
        raise ConfigError(f"{where}.install_path' must be an absolute path (on the site's nodes), got {install!r}")
    site_map = raw.get("site_map", {})
    if not isinstance(site_map, dict) or not all(isinstance(k, str) for k in site_map):
        raise ConfigError(f"{where}.site_map' must be a mapping of site-map fields, got {site_map!r}")
    for k in ("site", "ce"):
        if k in site_map:
            raise ConfigError(f"{where}.site_map.{k}' is the token's: leave it out")
    staging = raw.get("arc_staging", False)
    if not isinstance(staging, bool):
        raise ConfigError(f"{where}.arc_staging' must be true or false, got {staging!r}")
    queue = text("queue", required=False)
    if any(c in queue for c in '"()&|\n'):
        raise ConfigError(f"{where}.queue' holds a character xRSL cannot carry: {queue!r}")
    return SiteConfig(site=text("site"), token_file=text("token_file"), arc_ces=ces, install_path=install,
                      site_map=dict(site_map), output_ses=texts("output_ses"), arc_staging=staging, queue=queue)


def load_settings(path: Optional[Union[str, Path]] = None, overrides: Optional[Mapping[str, Any]] = None, *,
                  environ: Optional[Mapping[str, str]] = None) -> TowerSettings:
    """The layers' values, checked as a whole (the sites' entries, the ARC credentials' files and modes)."""
    loaded: Loaded = load(SCHEMA, path, environ=environ, overrides=overrides)
    s: TowerSettings = loaded.value
    at = loaded.at
    if not s.central_url.startswith(("http://", "https://")):
        raise ConfigError(f"{at('central_url')}: field 'central_url' must start with http:// or https://, "
                          f"got {s.central_url!r}")
    if not s.sites:
        raise ConfigError(f"{at('sites')}: field 'sites' must list at least one site")
    if len(s.sites) > MAX_SITES:
        raise ConfigError(f"{at('sites')}: field 'sites' lists {len(s.sites)} sites, at most {MAX_SITES}")
    seen: Dict[str, int] = {}
    for i, raw in enumerate(s.sites):
        try:
            site = _site(i, raw)
        except ConfigError as e:
            raise ConfigError(f"{at('sites', i)}: {e}") from None
        if site.site in seen:
            raise ConfigError(f"{at('sites', i)}: field 'sites[{i}].site': {site.site!r} is served twice (also "
                              f"sites[{seen[site.site]}])")
        seen[site.site] = i
    if (s.arc_cert is None) != (s.arc_key is None):
        raise ConfigError(f"{at('arc_cert')}: fields 'arc_cert' and 'arc_key' go together")
    if s.arc_cert is None and s.arc_token_file is None:
        raise ConfigError(f"{at('arc_cert')}: the ARC CEs need a credential: arc_cert and arc_key, or "
                          "arc_token_file")
    for name in ("arc_key", "arc_token_file"):
        value = getattr(s, name)
        if value is not None:
            try:
                check_private(value, f"field '{name}':")
            except ConfigError as e:
                raise ConfigError(f"{at(name)}: {e}") from None
    for name in ("arc_cert", "arc_ca_file", "arc_ca_dir"):
        value = getattr(s, name)
        if value is not None and not os.path.exists(value):
            raise ConfigError(f"{at(name)}: field '{name}': {value} does not exist")
    if s.log_se is not None and not s.log_se.startswith(("file://", "root://")):
        raise ConfigError(f"{at('log_se')}: field 'log_se' must be a file:// or root:// URL, got {s.log_se!r}")
    if s.log_url_base is not None and not s.log_url_base.startswith(("http://", "https://")):
        raise ConfigError(f"{at('log_url_base')}: field 'log_url_base' must be an http(s):// URL, "
                          f"got {s.log_url_base!r}")
    if s.ce_backoff_max < s.ce_backoff_base:
        raise ConfigError(f"{at('ce_backoff_max')}: field 'ce_backoff_max' must be at least ce_backoff_base "
                          f"({s.ce_backoff_base}), got {s.ce_backoff_max}")
    s.state_dir = os.path.abspath(os.path.expanduser(s.state_dir))
    return s


__all__ = ["ARC_STAGING_SCHEMES", "SCHEMA", "SITE_KEYS", "SiteConfig", "TowerSettings", "check_private",
           "load_settings", "read_token"]
