"""Where central keeps its state and the knobs the service reads: one frozen dataclass, no I/O beyond paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from gridpilot.endpoints import default_state_dir

DB_URL_ENV = "GRIDPILOT_DB_URL"
SIGNING_KEY_ENV = "GRIDPILOT_SIGNING_KEY"
#: The token signing key's file in the state directory (keys.py), unless signing_key_file names another.
SIGNING_KEY_FILE = "signing.key"
DB_FILE = "central.db"
ADMIN_TOKEN_FILE = "admin.token"

#: A job silent this long turns ZOMBIE; a ZOMBIE silent this much longer turns EXPIRED (DESIGN, issue 4).
DEFAULT_ZOMBIE_AFTER_S = 3600.0
DEFAULT_EXPIRE_AFTER_S = 3600.0
DEFAULT_SWEEP_INTERVAL_S = 60.0
#: Request bodies above this are refused with 413 before they are read into memory.
DEFAULT_MAX_BODY = 4 << 20
#: A job that never reached RUNNING goes back to WAITING at most this many times (DESIGN).
MAX_AUTO_RESUBMITS = 3
#: How many times a job's owner (or an admin) may send it back to WAITING with `gridpilot resubmit`, counted apart
#: from central's own MAX_AUTO_RESUBMITS. ALICE sets no limit; one keeps a broken job from being retried forever.
DEFAULT_MAX_USER_RESUBMITS = 10
#: The bounds of max_user_resubmits (`gridpilot central serve --max-user-resubmits`); 0 turns resubmission off.
MAX_USER_RESUBMITS_BOUND = 1000
#: Each user's own area of the catalogue, where its jobs may write (areas.py): {user} its name, {initial} the
#: first character, after ALICE's /alice/cern.ch/user/<initial>/<user>.
DEFAULT_USER_AREA = "/gridpilot/user/{initial}/{user}"
#: The most subjobs one masterjob may have (central/splitting.py): a Split that would make more is refused with a
#: 400 naming Split. Each subjob is a row, a trace line and a JDL written in the submission's one transaction.
DEFAULT_MAX_SUBJOBS = 10_000
#: The bounds of max_subjobs.
MAX_SUBJOBS_BOUND = 100_000
#: nodeBad (nodes.py): counted failures of one node within the window that stop the broker matching it.
DEFAULT_NODE_BAD_AFTER = 5
DEFAULT_NODE_BAD_WINDOW_S = 3600.0
#: The users whose jobs are production (broker.Policy): ALICE's production account.
DEFAULT_PRODUCTION_USERS = ("aliprod",)
#: Requests in flight per process. anyio's worker threads are 40 per process: 32 leave 8 for the routes that are
#: not admitted (health, metrics), and PostgreSQL's pool (10 + 30 overflow per process) holds them all.
DEFAULT_MAX_INFLIGHT = 32
MAX_INFLIGHT_BOUND = 10_000
#: Requests per second and burst per token per process. A pilot's agent token carries its jobs' control polls
#: (one every 3 s per job: ~43/s for 128 single-core jobs), heartbeats and reports; a CE mints a token per pilot in
#: bursts; a tower reports in bulk. 200/s after 2000 at once is far above all of them.
DEFAULT_RATE_LIMIT = 200.0
DEFAULT_RATE_BURST = 2000
RATE_LIMIT_BOUND = 1e6
#: PostgreSQL's statement_timeout for the requests' statements (central/db.py): a hung or overloaded database
#: gives a 503 within this long instead of a request that waits for ever.
DEFAULT_DB_STATEMENT_TIMEOUT_S = 30.0

#: Control polls a second all the pilots together are paced to (central/pacing.py): a bulk poll costs ~2 ms of CPU
#: (docs/scaling.md), so 500 a second is about one core; below 1,500 pilots the pilots' own 3 s is the pace.
DEFAULT_CONTROL_POLL_RATE = 500.0
CONTROL_POLL_RATE_BOUND = 1e6

#: Central's history (history.py): a snapshot at most this often, from the sweeper's loop (0: none), kept this long.
DEFAULT_HISTORY_INTERVAL_S = 60.0
DEFAULT_HISTORY_KEEP_S = 7 * 86400.0
#: The bounds of history_keep_s (`central serve --history-keep`).
HISTORY_KEEP_BOUNDS = (3600.0, 90 * 86400.0)


def sqlite_url(state_dir: Union[str, Path]) -> str:
    return f"sqlite:///{Path(state_dir) / DB_FILE}"


def resolve_db_url(db_url: Optional[str], state_dir: Union[str, Path]) -> str:
    """The database URL to use: the one given, else GRIDPILOT_DB_URL, else the SQLite file in the state dir."""
    return db_url or os.environ.get(DB_URL_ENV) or sqlite_url(state_dir)


@dataclass(frozen=True)
class CentralSettings:
    """What one central process needs to know; every process serving one database should agree on it."""

    db_url: str
    state_dir: Path
    zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S
    expire_after_s: float = DEFAULT_EXPIRE_AFTER_S
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    max_body: int = DEFAULT_MAX_BODY
    max_auto_resubmits: int = MAX_AUTO_RESUBMITS
    #: User resubmissions allowed per job (jobs.resubmit), 0 to MAX_USER_RESUBMITS_BOUND.
    max_user_resubmits: int = DEFAULT_MAX_USER_RESUBMITS
    user_area: str = DEFAULT_USER_AREA
    #: The private key this process signs tokens with; None: SIGNING_KEY_FILE in the state directory.
    signing_key_file: Optional[Path] = None
    #: Serve without a signing key: verify tokens only (minting routes, /match among them, answer 503).
    verify_only: bool = False
    #: A node with this many counted failures within node_bad_window_s is nodeBad (nodes.py); 0: never.
    node_bad_after: int = DEFAULT_NODE_BAD_AFTER
    node_bad_window_s: float = DEFAULT_NODE_BAD_WINDOW_S
    #: Subjobs one masterjob may have (splitting.py), 1 to MAX_SUBJOBS_BOUND.
    max_subjobs: int = DEFAULT_MAX_SUBJOBS
    #: The storage element users' own files go to unless they name one (`gridpilot submit`'s sandbox, `cp`);
    #: None: the one `central init` made (serve.DEFAULT_SE_NAME) when configured, else the only one (catalogue.py).
    default_se: Optional[str] = None
    #: Brokering on what a node can do (broker.Policy, docs/broker.md): production users, whose jobs never go to
    #: an x86_64 node without AVX while production_requires_avx; the lowest x86-64 level (0: none) of every
    #: x86_64 job; the oldest pilot given any job; whether every job needs a container.
    production_users: Tuple[str, ...] = DEFAULT_PRODUCTION_USERS
    production_requires_avx: bool = True
    min_x86_level: int = 0
    min_pilot_version: Optional[str] = None
    require_container: bool = False
    #: Admission control (central/admission.py, docs/scaling.md "Overload and slow databases"): requests in flight
    #: per process before 503 overloaded; requests per second and burst per token per process before 429
    #: rate_limited (rate 0: no limit).
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    #: PostgreSQL: a statement running longer is cancelled, and the request answered 503 database_unavailable
    #: (0: no limit). Set after the schema upgrade, so a long migration step is not cut.
    db_statement_timeout_s: float = DEFAULT_DB_STATEMENT_TIMEOUT_S
    #: The pilots' control polls, all together, paced to this many a second (central/pacing.py; 0: no pace).
    control_poll_rate: float = DEFAULT_CONTROL_POLL_RATE
    #: Central's history (history.py, the web view's overview): a snapshot of the jobs per state and this host's
    #: matches and heartbeats at most every history_interval_s, taken at the sweeper's passes (so never more often
    #: than sweep_interval_s; 0: none); snapshots older than history_keep_s are deleted.
    history_interval_s: float = DEFAULT_HISTORY_INTERVAL_S
    history_keep_s: float = DEFAULT_HISTORY_KEEP_S

    def broker_policy(self) -> Any:
        """These settings as the broker's Policy (imported here: settings.py is read by code that never brokers)."""
        from gridpilot.central.broker import Policy

        return Policy(frozenset(self.production_users), self.production_requires_avx, self.min_x86_level,
                      self.min_pilot_version, self.require_container)

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file if self.signing_key_file is not None else self.state_dir / SIGNING_KEY_FILE

    @classmethod
    def from_args(
        cls, state_dir: Optional[Union[str, Path]] = None, db_url: Optional[str] = None,
        signing_key: Optional[Union[str, Path]] = None, **kw: Any
    ) -> CentralSettings:
        """Settings from command-line values, each falling back to its environment variable, then its default."""
        sd = Path(state_dir).expanduser() if state_dir is not None else default_state_dir()
        key = signing_key or os.environ.get(SIGNING_KEY_ENV) or None
        return cls(db_url=resolve_db_url(db_url, sd), state_dir=sd,
                   signing_key_file=Path(key).expanduser() if key else None, **kw)
