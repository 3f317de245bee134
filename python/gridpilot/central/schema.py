"""The tables central keeps, in SQLAlchemy Core. This is the schema of the newest version (migrations.py builds it).

Times are unix seconds as floats (what the API returns), states and kill reasons their ALICE codes.
The jobs table carries, next to the JDL text, the few values the broker filters on in SQL (cores, sizes in MB,
TTL, GPUs, price, priority, the Requirements text and its hash), so matching never parses JDL per row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

#: The longest key a reporter may give a trace entry (traces.entry_key; jobs.py checks it, a migration adds it).
TRACE_KEY_LENGTH = 64

#: The longest ARC job id and pilot log URL a report may give (jobs.arc_job_id, jobs.pilot_log_url).
ARC_JOB_ID_LENGTH = 256
PILOT_LOG_URL_LENGTH = 2048

#: SQLite only makes an auto-incrementing rowid alias of a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", Float, nullable=False),
    Column("description", Text, nullable=False),
)

#: Service-wide values every central process reads: the token issuer; until its retirement, the HS256 secret of a
#: database made before step 6 (keys.LEGACY_KID).
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False),
    Column("name", String(255)),
    Column("state", SmallInteger, nullable=False),
    # The held state a ZOMBIE job returns to when its heartbeats come back.
    Column("before_zombie", SmallInteger),
    Column("state_since", Float, nullable=False),
    Column("kill_reason", SmallInteger),
    Column("kill_requested", Boolean, nullable=False, default=False),
    Column("jdl", Text, nullable=False),
    # What the broker filters on; memory_mb and disk_mb are 0 when the JDL does not ask (see broker.needs_of).
    Column("cores", Integer, nullable=False),
    Column("memory_mb", BigInteger, nullable=False),
    Column("disk_mb", BigInteger, nullable=False),
    Column("ttl", Integer, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("gpu_name", String(255)),
    # The GPU request's other terms (schema step 15; jdl/gpus.py): an exact model, a vendor, an architecture.
    Column("gpu_model", String(255)),
    Column("gpu_vendor", String(64)),
    Column("gpu_arch", String(16)),
    Column("price", Float, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("requirements", Text),
    Column("req_hash", String(40), nullable=False),
    Column("output_dir", Text),
    # Where the job is held: filled at match, cleared when it goes back to WAITING.
    Column("site", String(255)),
    Column("ce", String(255)),
    Column("node", String(255)),
    Column("agent", String(255)),
    Column("token_jti", String(64)),
    Column("token_exp", Float),
    Column("resubmission", Integer, nullable=False, default=0),
    # Returns to WAITING that central made because the job never reached RUNNING (at most 3).
    Column("auto_resubmits", Integer, nullable=False, default=0),
    Column("reached_running", Boolean, nullable=False, default=False),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("resources", Text),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("heartbeat", Float),
    # What the job needs of the node (schema step 14, broker.JobNeeds): its architecture (NULL: a row from before,
    # matched on any), the x86-64 level asked (0: none), whether it needs a container (0/1) and the oldest pilot.
    Column("arch", String(16)),
    Column("cpu_level", SmallInteger, nullable=False, server_default=text("0")),
    Column("require_container", SmallInteger, nullable=False, server_default=text("0")),
    Column("min_pilot_version", String(64)),
    # Where a tower ran the attempt (schema step 16; bulkreports.py): the ARC CE's id of its ARC job, and the URL
    # where the tower published the pilot log. NULL for a job run by a pilot; cleared with a resubmission (the
    # trace keeps each attempt's).
    Column("arc_job_id", String(ARC_JOB_ID_LENGTH)),
    Column("pilot_log_url", String(PILOT_LOG_URL_LENGTH)),
    # Heartbeats rewrite a job row every minute or so. Room left on each page, and no index over the columns a
    # heartbeat changes (heartbeat, updated, resources), let PostgreSQL update the row in place (a HOT update)
    # instead of adding an entry to every index of the table each time.
    postgresql_with={"fillfactor": "80"},
)


# The broker's scan: WAITING jobs in rank order (priority, price, age), so the first rows read are the answer.
# user and req_hash too (schema step 7), so the rows the broker leaves out by user (passed over for their share of
# a match) or by Requirements (false on the site map) are skipped in the index, without reading the row: a row
# holds its JDL (Requirements of up to 16 KB, twice), and SQLite reads a column stored after a long one by following
# its overflow pages: skipping 1,000 such rows took 16 ms, 1.2 ms through the index (matching.py).
ix_jobs_queue = Index("ix_jobs_queue", jobs.c.state, jobs.c.priority.desc(), jobs.c.price.desc(), jobs.c.id,
                      jobs.c.user, jobs.c.req_hash)
Index("ix_jobs_user", jobs.c.user, jobs.c.id)
Index("ix_jobs_site", jobs.c.site, jobs.c.id)
# The sweeper finds held jobs through ix_jobs_queue (state first); an index on heartbeat would cost every heartbeat.

traces = Table(
    "traces",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("category", String(16), nullable=False),
    Column("text", Text, nullable=False),
    # The key the reporter gave the entry (the agent: its run of the job and a sequence number), so an append it
    # repeats after an answer it never got (central killed after the commit) is stored once. NULL for central's own.
    Column("entry_key", String(TRACE_KEY_LENGTH)),
    # When the reporter says it wrote the line (its node's clock); `ts` is when central took it. NULL for central's.
    Column("reported_ts", Float),
)
Index("ix_traces_job", traces.c.job_id, traces.c.ts, traces.c.id)
#: Unique per job; NULLs (central's own lines, appends without keys) never collide, in SQLite as in PostgreSQL.
ux_traces_key = Index("ux_traces_key", traces.c.job_id, traces.c.entry_key, unique=True)

#: Tokens revoked before their expiry (job tokens at their job's end, any token on an admin's request).
revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires", Float, nullable=False),
    Column("reason", String(255), nullable=False),
)

storage_elements = Table(
    "storage_elements",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("url", Text, nullable=False),
    Column("kind", String(16), nullable=False),
)

files = Table(
    "files",
    metadata,
    Column("lfn", String(1024), primary_key=True),
    Column("dir", String(1024), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("adler32", String(8)),
    Column("md5", String(32)),
    Column("job_id", BigInteger),
    Column("owner", String(255), nullable=False),
    Column("created", Float, nullable=False),
)
Index("ix_files_dir", files.c.dir)
# A job's files (GET /jobs/{id}/files, `gridpilot get`) and a resubmission's removal of an ended attempt's
# (catalogue.forget_job_files) select by job_id and page or sort by LFN: both read (job_id, lfn) from the index in
# order, without sorting, and, for the removal, without reading the rows. Without it both scanned the whole files
# table (schema step 12; docs/central-api.md has the numbers). job_id is NULL for a user's own files: one entry each.
ix_files_job = Index("ix_files_job", files.c.job_id, files.c.lfn)

replicas = Table(
    "replicas",
    metadata,
    Column("lfn", String(1024), ForeignKey("files.lfn", ondelete="CASCADE"), nullable=False),
    Column("se", String(255), nullable=False),
    Column("pfn", Text, nullable=False),
    Column("created", Float, nullable=False),
    PrimaryKeyConstraint("lfn", "se"),
)

#: The pilots each computing element has in its batch system, as it last reported them (one row per site and CE).
#: Counts of pilots by batch state (queued, running, finished, failed, held); /metrics reads them at scrape time.
ce_pilots = Table(
    "ce_pilots",
    metadata,
    Column("site", String(255), nullable=False),
    Column("ce", String(255), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("queued", Integer, nullable=False),
    Column("running", Integer, nullable=False),
    Column("finished", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("held", Integer, nullable=False),
    Column("updated", Float, nullable=False),
    # The pilots the CE saw end since it started, by exit reason (exitcodes.reason()), JSON {reason: count}; NULL
    # from a CE that does not say (step 17; pilots.py bounds it).
    Column("ended", Text),
    PrimaryKeyConstraint("site", "ce"),
)

#: Catalogue areas an admin granted a user beyond its own (settings.user_area): its jobs may have an OutputDir there.
user_areas = Table(
    "user_areas",
    metadata,
    Column("user", String(255), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("granted", Float, nullable=False),
    Column("granted_by", String(255), nullable=False),
    PrimaryKeyConstraint("user", "path"),
)

#: The public keys tokens are signed with (the private keys are files, never here: keys.py). Every central process
#: on the database accepts a token signed with a key listed here until the key's retire_at; step 6.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    # The public key as a JWK (JSON), as /.well-known/jwks.json publishes it; empty for the legacy HS256 entry.
    Column("jwk", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("retire_at", Float),
)

#: The worker nodes central has heard of, keyed by host name (the site map's `node`), and whether each is nodeBad:
#: refused by the broker until an operator clears it (nodes.py). Written when a node fails (node_events) and, at most
#: once a minute per host, when it asks for work (last_seen). A later node probe (issue 20) adds its own event kind
#: and columns here; `bad_source` says what marked the node bad.
nodes = Table(
    "nodes",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("site", String(255)),
    Column("ce", String(255)),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("bad", Boolean, nullable=False, default=False),
    Column("bad_since", Float),
    Column("bad_reason", Text),
    #: What marked it bad: "failures" (the counts over the window); a probe would add its own.
    Column("bad_source", String(32)),
    #: Who cleared it last, and when: failures before cleared_at no longer count.
    Column("cleared_by", String(255)),
    Column("cleared_at", Float),
)
Index("ix_nodes_site", nodes.c.site, nodes.c.host)

#: A node's failures, each counted once (nodes.py): the kind (error_connecting, stall, sandbox_create, oom_system),
#: when central learned of it, how long it lasted (stalls, outages), the job it hit. `counted` is false for a report
#: that repeats one already counted (another job's view of the same outage) or an outage shared with other hosts.
node_events = Table(
    "node_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), ForeignKey("nodes.host", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ts", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("job_id", BigInteger),
    Column("counted", Boolean, nullable=False),
    Column("reported_by", String(255), nullable=False),
    Column("detail", Text),
)
Index("ix_node_events_host", node_events.c.host, node_events.c.ts)
Index("ix_node_events_kind", node_events.c.kind, node_events.c.ts)

#: The last site maps agents posted to ask for work, one row per site, CE and shape (cores, memory, disk, arch,
#: platform, GPUs, partitions: what a slot of that kind offers whatever its time left), so `gridpilot why` can say
#: what each kind of slot lacks for a WAITING job, on any central process (offers.py). Bounded: at most
#: offers.MAX_SHAPES rows per site and CE, each rewritten at most every offers.WRITE_EVERY_S per process.
match_offers = Table(
    "match_offers",
    metadata,
    Column("site", String(255), nullable=False),
    Column("ce", String(255), nullable=False),
    Column("shape", String(40), nullable=False),
    Column("seen", Float, nullable=False),
    Column("node", String(255)),
    # The site map as central checked it (site and CE bound to the agent's token), JSON.
    Column("offer", Text, nullable=False),
    PrimaryKeyConstraint("site", "ce", "shape"),
)

#: Which masterjob each subjob belongs to (central/splitting.py; schema step 11). A masterjob is a jobs row in state
#: SPLIT that never runs; its subjobs are ordinary jobs rows, made with it in one transaction. `counter` is the
#: subjob's #alien_counter# (from 1, in split order). The primary key answers "is this job a subjob" (the user's job
#: list leaves subjobs out), the index "the subjobs of this masterjob".
subjobs = Table(
    "subjobs",
    metadata,
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, autoincrement=False),
    Column("master_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("counter", Integer, nullable=False),
)
Index("ix_subjobs_master", subjobs.c.master_id, subjobs.c.job_id)


#: `gridpilot spy` (spy.py): what a job's owner asked its pilot to show, and the pilot's answer (JSON, bounded by
#: spy.MAX_BYTES / MAX_ENTRIES). Rows live spy.EXPIRES_S; each new request deletes the expired ones; step 10.
spy_requests = Table(
    "spy_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    # The run of the job asked: a later run's pilot does not answer for an earlier one.
    Column("resubmission", Integer, nullable=False),
    Column("requested_by", String(255), nullable=False),
    Column("what", String(16), nullable=False),
    Column("lines", Integer, nullable=False),
    # For `--follow`: show only what the file holds after this byte (spy.py).
    Column("byte_offset", BigInteger),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("answered", Float),
    Column("answer", Text),
)
Index("ix_spy_requests_job", spy_requests.c.job_id, spy_requests.c.expires)
Index("ix_spy_requests_user", spy_requests.c.requested_by, spy_requests.c.expires)
Index("ix_spy_requests_expires", spy_requests.c.expires)

#: Each node's latest probe (`gridpilot node check`, posted by its pilot: central/nodeprobes.py; step 13): the
#: probe as posted (JSON, bounded by nodeprobes.MAX_BYTES), its digest (probedigest.py: what changes when the node
#: does), and the fields `GET /nodes` filters on and /metrics counts, read out of it when stored.
node_probes = Table(
    "node_probes",
    metadata,
    Column("host", String(255), ForeignKey("nodes.host", ondelete="CASCADE"), primary_key=True),
    Column("digest", String(64), nullable=False),
    # When it was last posted (a pilot's start), and when its digest last changed.
    Column("posted", Float, nullable=False),
    Column("changed", Float, nullable=False),
    Column("posted_by", String(255), nullable=False),
    Column("pilot_version", String(64)),
    Column("arch", String(32)),
    Column("x86_64_level", String(16)),
    # The runtimes that started a container, space-separated (names are short words).
    Column("runtimes", Text, nullable=False),
    # The GPU models, one per line, one line per GPU (a model text holds no newline: nodeprobes.py).
    Column("gpus", Text, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("probe", Text, nullable=False),
)
Index("ix_node_probes_arch", node_probes.c.arch, node_probes.c.host)

#: The probes of a host as they changed: a row only when the digest differs from the latest (nodeprobes.py), at
#: most nodeprobes.MAX_HISTORY per host (the oldest go first); step 13.
node_probe_history = Table(
    "node_probe_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), ForeignKey("nodes.host", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("posted_by", String(255), nullable=False),
    Column("probe", Text, nullable=False),
)
Index("ix_node_probe_history_host", node_probe_history.c.host, node_probe_history.c.ts)

#: Central's own history (central/history.py; step 17): a snapshot each central host takes every
#: history_interval_s from its sweeper's loop: the jobs per state then (grid-wide: one GROUP BY, JSON {state: n}),
#: and the match requests, jobs assigned and heartbeat job-updates that host served since its processes started
#: (cumulative: the overview takes rates from the differences, a restart's reset included). Kept history_keep_s.
central_history = Table(
    "central_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("ts", Float, nullable=False),
    Column("states", Text, nullable=False),
    Column("matches", BigInteger, nullable=False),
    Column("assigned", BigInteger, nullable=False),
    Column("heartbeats", BigInteger, nullable=False),
)
Index("ix_central_history_ts", central_history.c.ts)
Index("ix_central_history_host", central_history.c.host, central_history.c.ts)

#: Tables by the schema version that introduced them (migrations.py creates them in this order).
TABLES_BY_VERSION = {
    1: (schema_version, settings, jobs, traces, revoked_tokens),
    2: (storage_elements, files, replicas),
    3: (ce_pilots,),
    5: (user_areas,),
    6: (signing_keys,),
    8: (nodes, node_events),
    9: (match_offers,),
    10: (spy_requests,),
    11: (subjobs,),
    13: (node_probes, node_probe_history),
    17: (central_history,),
}
#: Indexes a later step adds to a table an earlier step made (migrations.py leaves them out of the earlier step).
INDEXES_BY_VERSION = {
    12: (ix_files_job,),
}
#: Columns a later step adds to a table an earlier step made (migrations.py leaves them out of the earlier step).
COLUMNS_BY_VERSION = {
    14: (jobs.c.arch, jobs.c.cpu_level, jobs.c.require_container, jobs.c.min_pilot_version),
    15: (jobs.c.gpu_model, jobs.c.gpu_vendor, jobs.c.gpu_arch),
    16: (jobs.c.arc_job_id, jobs.c.pilot_log_url),
    17: (ce_pilots.c.ended,),
}
