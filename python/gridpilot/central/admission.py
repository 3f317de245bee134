"""Admission control: what one serve process takes on before it touches the database.

Two checks, in this order, at the start of every route that takes a token, before its body is read:
- a token bucket per bearer token (keyed by a hash of the token as sent, verified or not; "anonymous" and the
  client's address for a request without one): over `rate_limit` requests per second after a burst of
  `rate_burst`, the answer is 429 `rate_limited` with `Retry-After` the seconds until the bucket holds a request
  again. One flooding token (garbage or valid) so takes at most its rate of this process's work, and its refusals
  cost no thread and no database. At most MAX_TRACKED_TOKENS buckets are kept; the least recently used goes first
  (a flood of made-up tokens then refills the others' buckets early: generous, never stricter).
- a bound on requests in flight (being handled, or waiting for a worker thread or the database): over
  `max_inflight`, 503 `overloaded` with `Retry-After`. Nothing of the request ran, so any client may send it again,
  even a match or a submission: the code says so (`NOT_STARTED_CODES`). Retry-After grows with how long the oldest
  request in flight has been waiting (a hung database: the clients come back when it may have recovered, not
  every second), from 1 s to RETRY_AFTER_MAX_S.

The routes that take no token (GET /api/v1/health, GET /metrics, and the key set under /.well-known) are not
admitted here: a monitor and a load balancer's health check still get an answer from a process whose queue is full
(they need a worker thread, and max_inflight is kept below the thread pool's 40 for them).

A database that fails under a request (pool exhausted, statement timeout, connection lost, SQLite's lock wait
given up) is answered 503 `database_unavailable` with Retry-After (is_database_unavailable, database_unavailable):
the request may have taken effect, so clients repeat only the calls that are safe to repeat.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout

from gridpilot.central.problems import ApiError
from gridpilot.reachability import NOT_STARTED_CODES

#: Tokens with a bucket per process (each ~200 bytes): least recently used evicted beyond.
MAX_TRACKED_TOKENS = 100_000
#: The longest Retry-After of an overloaded process.
RETRY_AFTER_MAX_S = 30


class TokenBuckets:
    """Token buckets by key, at most `max_keys` of them (LRU). Thread-safe; `clock` is injected by tests."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_TRACKED_TOKENS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: "OrderedDict[bytes, Tuple[float, float]]" = OrderedDict()  # key -> (level, updated)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes) -> float:
        """Take one request from `key`'s bucket: 0.0 when it had one, else the seconds until it will."""
        now = self.clock()
        with self._lock:
            level, updated = self._buckets.pop(key, (self.burst, now))
            level = min(self.burst, level + (now - updated) * self.rate)
            wait = 0.0
            if level >= 1.0:
                level -= 1.0
            else:
                wait = (1.0 - level) / self.rate
            self._buckets[key] = (level, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait


def token_key(authorization: Optional[str], client: Optional[str]) -> bytes:
    """The bucket of a request: a hash of its bearer token (never the token itself, which must not sit in memory
    longer than the request), or of its client address when it has none."""
    if authorization:
        return hashlib.blake2b(authorization.encode("utf-8", "replace"), digest_size=16).digest()
    return b"anonymous:" + (client or "-").encode()


class Admission:
    """One process's admission control (see the module's doc) and its metrics."""

    def __init__(self, max_inflight: int, rate: float, burst: float, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_inflight = max_inflight
        self.clock = clock
        self.buckets = TokenBuckets(rate, burst, clock=clock) if rate > 0 else None
        self._inflight: Dict[int, float] = {}  # request number -> when it was admitted
        self._next = 0
        self._lock = threading.Lock()
        self.refused = Counter("gridpilot_http_refused", "Requests refused before any work by admission control, by "
                               "route and reason (overloaded: 503, rate_limited: 429).", ["reason", "route"],
                               registry=registry)
        self.inflight_gauge = Gauge("gridpilot_http_inflight", "Requests this process is handling or has queued for a "
                                    "worker thread or the database (admitted routes only).", registry=registry)
        self.inflight_gauge.set_function(lambda: len(self._inflight))
        self.db_busy = Counter("gridpilot_database_unavailable", "Requests answered 503 database_unavailable (the "
                               "database timed out or failed under them), by route.", ["route"], registry=registry)

    def enter(self, route: str, authorization: Optional[str], client: Optional[str]) -> Tuple[Optional[int],
                                                                                                Optional[ApiError]]:
        """Admit a request: (its ticket for leave(), None), or (None, the refusal to answer with)."""
        if self.buckets is not None:
            wait = self.buckets.take(token_key(authorization, client))
            if wait > 0:
                self.refused.labels(reason="rate_limited", route=route).inc()
                return None, ApiError(429, "rate_limited", f"too many requests with this token: at most "
                                      f"{self.buckets.rate:g} per second (burst {self.buckets.burst:g}) per central "
                                      f"process; try again after Retry-After seconds", retry_after=_whole(wait))
        now = self.clock()
        with self._lock:
            if len(self._inflight) >= self.max_inflight:
                oldest = min(self._inflight.values())
                retry = min(RETRY_AFTER_MAX_S, max(1, _whole((now - oldest) / 2)))
                refusal = ApiError(503, "overloaded", f"central is busy: {self.max_inflight} requests in flight in "
                                   f"this process; nothing of this request was done, send it again after "
                                   f"Retry-After seconds", retry_after=retry)
            else:
                self._next += 1
                self._inflight[self._next] = now
                return self._next, None
        self.refused.labels(reason="overloaded", route=route).inc()
        return None, refusal

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._inflight.pop(ticket, None)

    @property
    def inflight(self) -> int:
        return len(self._inflight)


def _whole(seconds: float) -> int:
    """Retry-After is whole seconds (RFC 9110 delay-seconds): rounded up, at least 1."""
    return max(1, int(math.ceil(seconds)))


#: Seconds a client is asked to wait after the database failed under its request.
DATABASE_RETRY_AFTER_S = 2
def is_database_unavailable(e: BaseException) -> bool:
    """Whether `e` is the database being slow or gone, not a bug: the pool had no connection within its timeout; on
    PostgreSQL any OperationalError (a statement past statement_timeout, a lock wait past lock_timeout, a connection
    refused, lost or timed out, a serialization failure); on SQLite only its lock wait given up ("database is
    locked"): its other OperationalErrors (no such table...) are bugs."""
    if isinstance(e, PoolTimeout):
        return True
    if not isinstance(e, OperationalError):
        return False
    if isinstance(e.orig, sqlite3.Error):
        text = str(e.orig).lower()
        return "locked" in text or "busy" in text
    return True


def database_unavailable(e: BaseException) -> ApiError:
    """The 503 for a database that failed under a request (is_database_unavailable); its text stays in the log."""
    what = ("no database connection came free in time" if isinstance(e, PoolTimeout) else
            "the database timed out or went away")
    return ApiError(503, "database_unavailable", f"central's database is busy or unavailable ({what}); the request "
                    "may or may not have taken effect: repeat it if it is safe to", retry_after=DATABASE_RETRY_AFTER_S)


__all__ = ["Admission", "MAX_TRACKED_TOKENS", "NOT_STARTED_CODES", "TokenBuckets", "database_unavailable", "is_database_unavailable",
           "token_key"]
