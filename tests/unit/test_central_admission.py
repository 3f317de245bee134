"""Admission control's parts (central/admission.py) with a test clock: the token buckets (rate, burst, the bound on
how many are kept), the bound on requests in flight and its Retry-After, and which database errors are a 503."""

from __future__ import annotations

import sqlite3

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout

from gridpilot.central.admission import (NOT_STARTED_CODES, Admission, TokenBuckets, is_database_unavailable,
                                         token_key)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_bucket_gives_its_burst_then_its_rate():
    clock = Clock()
    b = TokenBuckets(rate=10.0, burst=5, clock=clock)
    assert [b.take(b"a") for _ in range(5)] == [0.0] * 5
    assert b.take(b"a") == 0.1  # one request more in 1/rate s
    assert b.take(b"b") == 0.0  # another token has its own bucket
    clock.t += 0.35
    assert b.take(b"a") == 0.0 and b.take(b"a") == 0.0 and b.take(b"a") == 0.0
    assert b.take(b"a") > 0
    clock.t += 3600
    assert sum(b.take(b"a") == 0.0 for _ in range(10)) == 5  # refilled to the burst, never beyond


def test_the_buckets_kept_are_bounded_least_recently_used_first():
    clock = Clock()
    b = TokenBuckets(rate=1.0, burst=1, max_keys=3, clock=clock)
    for k in (b"a", b"b", b"c"):
        b.take(k)
    assert b.take(b"a") > 0  # a used again: the most recent
    b.take(b"d")  # evicts b, the least recently used
    assert len(b) == 3
    assert b.take(b"c") > 0 and b.take(b"a") > 0
    assert b.take(b"b") == 0.0  # forgotten: a full bucket again (never stricter than the limit)


def test_token_key_hides_the_token_and_tells_anonymous_clients_apart():
    k = token_key("Bearer secret.token.value", "10.0.0.1")
    assert b"secret" not in k and len(k) == 16
    assert token_key("Bearer secret.token.value", "10.0.0.2") == k
    assert token_key(None, "10.0.0.1") != token_key(None, "10.0.0.2")


def test_in_flight_requests_are_bounded_and_the_retry_after_grows_with_the_wait():
    clock = Clock()
    a = Admission(2, 0, 0, CollectorRegistry(), clock=clock)
    t1, r1 = a.enter("/r", "Bearer x", None)
    t2, r2 = a.enter("/r", "Bearer y", None)
    assert r1 is None and r2 is None and a.inflight == 2
    t3, r3 = a.enter("/r", "Bearer z", None)
    assert t3 is None and r3 is not None and (r3.status, r3.code, r3.extra["retry_after"]) == (503, "overloaded", 1)
    clock.t += 20  # the oldest has waited 20 s (a stuck database): come back in 10
    _, r4 = a.enter("/r", "Bearer z", None)
    assert r4 is not None and r4.extra["retry_after"] == 10
    clock.t += 1000
    _, r5 = a.enter("/r", "Bearer z", None)
    assert r5 is not None and r5.extra["retry_after"] == 30  # RETRY_AFTER_MAX_S
    a.leave(t1)  # type: ignore[arg-type]
    t6, r6 = a.enter("/r", "Bearer z", None)
    assert r6 is None and t6 is not None and a.inflight == 2


def test_a_flooding_token_is_refused_429_and_others_are_not():
    clock = Clock()
    a = Admission(100, rate=5.0, burst=10, registry=CollectorRegistry(), clock=clock)
    answers = [a.enter("/r", "Bearer flood", None) for _ in range(50)]
    refused = [r for _, r in answers if r is not None]
    assert len(refused) == 40 and {(r.status, r.code) for r in refused} == {(429, "rate_limited")}
    assert refused[0].extra["retry_after"] == 1
    # The client repeats any call refused so (client.py): both refusals are given before anything runs.
    assert {r.code for r in refused} <= NOT_STARTED_CODES and "overloaded" in NOT_STARTED_CODES
    ticket, r = a.enter("/r", "Bearer calm", None)
    assert r is None
    assert a.inflight == 11  # 10 of the flood (never left) and the calm one; refusals hold nothing


def test_which_database_errors_are_a_503():
    assert is_database_unavailable(PoolTimeout("QueuePool limit"))
    locked = OperationalError("x", {}, sqlite3.OperationalError("database is locked"))
    assert is_database_unavailable(locked)
    missing = OperationalError("x", {}, sqlite3.OperationalError("no such table: jobs"))
    assert not is_database_unavailable(missing)  # a bug: stays a 500
    assert is_database_unavailable(OperationalError("x", {}, Exception("canceling statement due to statement timeout")))
    assert not is_database_unavailable(ValueError("x"))
