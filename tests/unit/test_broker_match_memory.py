"""What one central process remembers between matches to keep a match's cost flat as agents and the queue grow
(issue 22): the Requirements it found false on such a site map (broker.RequirementCache.known_false, left out of a
match's first scan) and the jobs its other threads are assigning or just assigned (matching._InFlight)."""

from __future__ import annotations

import time

from gridpilot.central import broker, matching
from gridpilot.jdl.requirements import SiteView

ELSEWHERE = 'other.CE == "SOMEWHERE::ELSE::CE"'
LONG = "other.TTL > 7200"


def view(**attrs: object) -> SiteView:
    site = broker.parse_site_map({"site": "S", "ce": "S::CE", "ttl": 3600, **attrs})
    return SiteView(broker.site_attributes(site))


def judged(cache: broker.RequirementCache, text: str, v: SiteView) -> bool:
    h = broker.requirements_hash(text)
    c = cache.compile(h, text)
    assert c is not None
    ok, _ = cache.holds(h, c, v)
    assert ok is not None
    return ok


def test_a_text_found_false_is_known_false_on_site_maps_that_agree_on_what_it_reads():
    cache = broker.RequirementCache()
    here = view(node="n1")
    assert cache.known_false(here) == []
    assert judged(cache, ELSEWHERE, here) is False
    assert judged(cache, LONG, here) is False
    both = {broker.requirements_hash(ELSEWHERE), broker.requirements_hash(LONG)}
    assert set(cache.known_false(here)) == both
    # Another node of the same CE with as little time left: the texts read CE and TTL only, so both still hold false.
    assert set(cache.known_false(view(node="n2"))) == both
    # A slot with more time: the TTL text was never judged there, so it is not taken as false; the CE one is.
    assert cache.known_false(view(node="n1", ttl=86400)) == [broker.requirements_hash(ELSEWHERE)]


def test_a_text_that_holds_is_never_known_false():
    cache = broker.RequirementCache()
    v = view(ttl=86400)
    assert judged(cache, LONG, v) is True
    assert cache.known_false(v) == []


def test_the_texts_remembered_false_are_bounded():
    cache = broker.RequirementCache()
    v = view()
    texts = [f'other.CE == "ELSEWHERE{i}"' for i in range(broker.FALSE_REMEMBERED + 10)]
    for t in texts:
        assert judged(cache, t, v) is False
    known = cache.known_false(v)
    # The newest are kept, the oldest dropped first.
    assert len(known) == broker.FALSE_REMEMBERED
    assert broker.requirements_hash(texts[-1]) in known and broker.requirements_hash(texts[0]) not in known


def test_a_job_being_assigned_is_passed_over_by_the_other_threads_until_released():
    f = matching._InFlight()
    read = time.monotonic()
    assert f.take(7, read)
    assert not f.take(7, read), "another thread of the process is assigning it"
    f.release(7, assigned=False)
    assert f.take(7, read), "that assignment failed: the job is free again"
    f.release(7, assigned=True)


def test_an_assigned_job_is_passed_over_only_by_batches_read_before_the_assignment():
    f = matching._InFlight()
    before = time.monotonic()
    assert f.take(3, before)
    f.release(3, assigned=True)
    assert not f.take(3, before), "a batch read before the assignment committed holds it as WAITING: stale"
    # A batch read afterwards holds it only if it is WAITING again (the assignment lost with a database crash):
    # then it is matched at once.
    after = time.monotonic()
    assert f.take(3, after)
