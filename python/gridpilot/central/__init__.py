"""Central services: the task queue, broker, job states and traces, file catalogue and tokens behind one HTTP API.

    settings.py   where state lives (state directory, database URL) and the service's tunables
    schema.py     the tables (SQLAlchemy Core)
    migrations.py schema versions, the upgrade path, and open_database (a Database at the current version)
    db.py         engines and transactions (SQLite WAL + BEGIN IMMEDIATE, PostgreSQL through psycopg 3)
    keys.py       token signing keys: the private key file, the public key set, rotation, the JWKS
    tokens.py     JWT minting, checking and revocation
    scopes.py     the scopes of each role and route (WLCG token profile)
    auth.py       who is calling and what they may touch; the states each role may set
    areas.py      where in the catalogue each user's jobs may write (own area, admin grants)
    paths.py      catalogue paths: normalized, compared
    broker.py     pure functions: site map attributes, resource fit, ranking
    jobs.py       the user's side of the queue: submit, get, list, kill, traces; central's resubmission
    resubmit.py   a user's resubmission of an ended job: limits, trace, the ended attempts' files
    matching.py   the broker's side: match and probe, atomically
    reports.py    the pilot's side: state reports and bulk heartbeats
    sweeper.py    lost jobs: ZOMBIE after silence, EXPIRED after more, resubmission
    catalogue.py  files, replicas, directories, storage elements
    metrics.py    Prometheus metrics (prometheus_client, one registry per Central)
    access.py     the access log: one line per request, never a token
    app.py        the Starlette routes
    serve.py      `central init` / `central serve` / `central token`, EmbeddedCentral for tests and the demo
    workers.py    `central serve --workers N`: the worker processes, the sweeper's lock, shared metrics

Importing this package imports nothing heavy: the service's dependencies (the `central` extra) load with the
modules that need them.
"""

from __future__ import annotations
