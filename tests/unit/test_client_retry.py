"""CentralClient's retries (client.py) on central's busy answers and on Retry-After, with an injected clock, random
source and sleep, against a stand-in for the connection pool that answers a list of responses in turn; and
reachability's Retry-After parsing and jitter. The same against real central processes:
tests/integration/test_central_overload.py and test_central_pg_pause.py."""

from __future__ import annotations

import email.utils
from typing import Any, List, Optional

import orjson
import pytest
from urllib3.response import HTTPResponse

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.reachability import (MAX_RETRY_AFTER_S, busy, not_started, parse_retry_after,
                                    retry_after_delay)


def answer(status: int, code: str = "", retry_after: Optional[str] = None, body: Any = None) -> HTTPResponse:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    data = orjson.dumps(body if body is not None else {"error": {"code": code, "message": code}})
    return HTTPResponse(body=data, headers=headers, status=status, preload_content=False)


class Pool:
    """Answers each request with the next of `answers` (an exception is raised)."""

    def __init__(self, answers: List[Any]) -> None:
        self.answers = list(answers)
        self.sent = 0

    def request(self, *a: Any, **kw: Any) -> HTTPResponse:
        self.sent += 1
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a

    def clear(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def client(answers: List[Any], *, rng: float = 0.5, retries: int = 5, deadline: Optional[float] = None):
    clock = Clock()
    c = CentralClient("http://central.invalid", "tok", retries=retries, backoff=0.2, max_backoff=5.0,
                      deadline=deadline, rng=lambda: rng, sleep=clock.sleep, clock=clock)
    pool = Pool(answers)
    c._pool = pool  # type: ignore[assignment]
    return c, pool, clock


OK = answer(200, body={"job": {"id": 7}})


def test_overloaded_is_repeated_even_for_a_match_after_retry_after_plus_jitter():
    c, pool, clock = client([answer(503, "overloaded", "4"), answer(503, "overloaded", "2"), OK], rng=0.5)
    assert c.match({"site": "S"}) == {"id": 7}
    # Retry-After plus rng x half of it: 4 + 1, 2 + 0.5.
    assert clock.sleeps == [5.0, 2.5] and pool.sent == 3


def test_rate_limited_is_repeated_and_once_the_retries_are_spent_its_error_carries_retry_after():
    c, pool, clock = client([answer(429, "rate_limited", "3")] * 3, retries=2, rng=0.0)
    with pytest.raises(CentralError) as e:
        c.submit("Executable = \"/bin/true\";")
    assert (e.value.status, e.value.code, e.value.retry_after) == (429, "rate_limited", 3.0)
    assert busy(e.value) and clock.sleeps == [3.0, 3.0] and pool.sent == 3


def test_database_unavailable_is_repeated_only_for_idempotent_calls():
    c, pool, clock = client([answer(503, "database_unavailable", "2")])
    with pytest.raises(CentralError) as e:
        c.match({"site": "S"})  # it may have assigned a job: not repeated
    assert (e.value.code, e.value.retry_after, pool.sent, clock.sleeps) == ("database_unavailable", 2.0, 1, [])
    c, pool, clock = client([answer(503, "database_unavailable", "2"), answer(200, body={"commands": []})], rng=1.0)
    assert c.heartbeats([{"job_id": 1, "resubmission": 0}]) == []
    assert clock.sleeps == [3.0]


def test_a_gateway_5xx_without_retry_after_backs_off_exponentially_with_jitter_and_a_cap():
    answers = [answer(502, body={"x": 1})] * 7 + [answer(200, body={"commands": []})]
    c, pool, clock = client(answers, retries=7, rng=1.0)
    c.heartbeats([])
    # 0.2 doubling, at most 5 (max_backoff); the top of each step with rng 1.0.
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    c, pool, clock = client(list(answers), retries=7, rng=0.0)
    c.heartbeats([])
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5])  # the bottom: half the step


def test_a_5xx_of_a_call_not_safe_to_repeat_is_not_repeated():
    c, pool, clock = client([answer(503, "http_503", "1")])
    with pytest.raises(CentralError) as e:
        c.submit("x")
    assert e.value.status == 503 and pool.sent == 1 and clock.sleeps == []


def test_a_wait_past_the_deadline_is_not_waited():
    c, pool, clock = client([answer(503, "overloaded", "4")] * 5, deadline=10.0, rng=0.0)
    with pytest.raises(CentralError) as e:
        c.health()
    # 4 + 4 = 8 s waited; a third wait would end at 12 > 10: the last answer is the call's.
    assert clock.sleeps == [4.0, 4.0] and pool.sent == 3 and e.value.code == "overloaded"
    from urllib3.exceptions import NewConnectionError

    refused = NewConnectionError(None, "refused")  # type: ignore[arg-type]
    c, pool, clock = client([refused] * 20, deadline=1.0, rng=1.0, retries=20)
    with pytest.raises(CentralUnreachable, match="deadline"):
        c.health()
    assert sum(clock.sleeps) <= 1.0


def test_a_huge_retry_after_is_capped():
    c, pool, clock = client([answer(503, "overloaded", "999999"), OK], rng=0.0)
    c.match({})
    assert clock.sleeps == [MAX_RETRY_AFTER_S]


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 2.0, 30.0])
def test_retry_after_jitter_stays_within_its_bounds_and_spreads_the_clients(retry_after):
    import random

    rng = random.Random(7)
    delays = [retry_after_delay(retry_after, rng.random) for _ in range(1000)]
    spread = max(0.1, retry_after * 0.5)
    assert all(retry_after <= d <= retry_after + spread for d in delays)
    # Not in lockstep: the clients refused together come back over the whole spread.
    assert max(delays) - min(delays) > 0.8 * spread
    assert len({round(d, 6) for d in delays}) > 900


def test_parse_retry_after():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    assert parse_retry_after("1e9") is None
    assert parse_retry_after("99999999999999999999") == MAX_RETRY_AFTER_S
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=lambda: 1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(999_000.0, usegmt=True), now=lambda: 1_000_000.0) == 0.0


def test_only_admission_refusals_certify_nothing_was_done():
    assert not_started(503, "overloaded") and not_started(429, "rate_limited")
    assert not not_started(503, "database_unavailable") and not not_started(503, "http_503")
    assert not not_started(429, "spy_limit") and not not_started(500, "overloaded")
