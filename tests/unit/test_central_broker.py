"""The broker's pure functions: what a job needs, what a site offers, fit, Requirements and ranking."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import pytest
from support.central import Raw, jdl, site_map
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.central import broker
from gridpilot.errors import JdlError
from gridpilot.jdl import load, parse_expression, parse_job
from support import paths

EXAMPLES = paths.ROOT / "examples"


@dataclass(frozen=True)
class Cand:
    """A queue row as the broker sees it."""

    id: int
    cores: int = 1
    memory_mb: int = 0
    disk_mb: int = 0
    ttl: int = 3600
    gpus: int = 0
    gpu_name: Optional[str] = None
    price: float = 1.0
    priority: int = 0
    created: float = 0.0
    user: str = "alice"
    requirements: Optional[str] = None
    req_hash: str = ""


def cand(id: int, text: Optional[str] = None, **kw) -> Cand:
    return Cand(id, requirements=text, req_hash=broker.requirements_hash(text), created=float(id), **kw)


def test_needs_take_sizes_only_when_the_jdl_asks():
    plain = broker.needs_of(parse_job(jdl(CPUCores=4, TTL=7200)))
    assert (plain.cores, plain.ttl, plain.memory_mb, plain.disk_mb, plain.gpus) == (4, 7200, 0, 0, 0)
    assert plain.requirements is None and plain.req_hash == ""
    sized = broker.needs_of(parse_job(jdl(MemorySize="4GB", WorkDirectorySize="512MB", GPU="MI50", Price=2)))
    assert (sized.memory_mb, sized.disk_mb, sized.gpus, sized.gpu_name, sized.price) == (4096, 512, 1, "MI50", 2.0)


def test_requirements_are_stored_canonically():
    a = broker.needs_of(parse_job(jdl(Requirements=Raw("other.TTL>7200&&member(other.CloseSE,\"X::Y::Z\")"))))
    b = broker.needs_of(parse_job(jdl(Requirements=Raw('other.TTL > 7200\n  && member(other.CloseSE, "X::Y::Z")'))))
    assert a.requirements == b.requirements and a.req_hash == b.req_hash and len(a.req_hash) == 40


def test_site_map_is_checked_field_by_field():
    s = broker.parse_site_map(site_map(partition="gpu, multicore_8", Packages=["VO_ALICE@O2::1"], bogus={"x": 1}))
    assert s.partitions == ("gpu", "multicore_8") and s.extra == {"Packages": ["VO_ALICE@O2::1"]}
    assert broker.parse_site_map({}).ttl is None
    assert broker.parse_site_map({"users": "alice, bob"}).users == ("alice", "bob"), "or a comma-separated string"
    for bad, field in [({"ttl": "long"}, "ttl"), ({"cores": 2.5}, "cores"), ({"memory_mb": -1}, "memory_mb"),
                       ({"avx": "yes"}, "avx"), ({"gpus": "none"}, "gpus"),
                       ({"gpus": [{"vendor": 3}]}, r"'gpus\[0\]\.vendor'"),
                       ({"ce": 5}, "ce"), ({"close_se": [1]}, "close_se"), ({"cvmfs_revision": 1.5}, "cvmfs")]:
        with pytest.raises(broker.SiteMapError, match=field):
            broker.parse_site_map(bad)


def test_site_attributes_use_alice_names_and_cannot_be_shadowed():
    gpu = {"vendor": "NVIDIA", "model": "A100", "pci_address": "0000:01:00.0"}
    s = broker.parse_site_map(site_map(gpus=[gpu], disk_mb=1000, partition="gpu", TTL=1, price=0.5))
    a = broker.site_attributes(s)
    assert a["TTL"] == 86400, "a site map's extra 'TTL' key cannot shadow the real one"
    assert a["LocalDiskSpace"] == 1000 * 1024 and a["GPUs"] == 1 and a["GPUModels"] == ["NVIDIA A100"]
    assert a["GridPartitions"] == ["gpu"] and a["Type"] == "machine" and a["price"] == 0.5
    assert "Partition" in a and "CE" in a and a["Node"] == "node1"


def test_misfit_names_the_reason():
    s = broker.parse_site_map(site_map(cores=4, ttl=1000, memory_mb=2000, disk_mb=5000, nousers=["eve"]))
    assert broker.misfit(cand(1), replace(s, ttl=None)) is None
    assert "cores" in broker.misfit(cand(1, cores=8), s)
    assert "TTL" in broker.misfit(cand(1, ttl=2000), s)
    assert "memory" in broker.misfit(cand(1, ttl=10, memory_mb=4000), s)
    assert "disk" in broker.misfit(cand(1, ttl=10, disk_mb=6000), s)
    assert "GPU" in broker.misfit(cand(1, ttl=10, gpus=1), s)
    assert "excluded" in broker.misfit(cand(1, ttl=10, user="eve"), s)
    only_bob = replace(s, users=("bob",))
    assert "not among" in broker.misfit(cand(1, ttl=10), only_bob)
    assert broker.misfit(cand(1, ttl=10, user="bob"), only_bob) is None
    nothing_said = broker.parse_site_map({})
    assert broker.misfit(cand(1, cores=64, ttl=10 ** 6, memory_mb=10 ** 6), nothing_said) is None


def test_gpu_name_matches_vendor_or_model():
    s = broker.parse_site_map(site_map(gpus=[{"vendor": "AMD", "model": "Radeon Instinct MI50 32GB"},
                                             {"vendor": "NVIDIA", "model": "Tesla T4"}]))
    assert broker.matching_gpus(s, None) == 2
    assert broker.matching_gpus(s, "mi50") == 1
    assert broker.matching_gpus(s, "NVIDIA") == 1
    assert broker.matching_gpus(s, "H100") == 0
    assert broker.misfit(cand(1, gpus=2, gpu_name="AMD"), s) is not None
    assert broker.misfit(cand(1, gpus=2), s) is None


def test_a_gpu_of_unknown_model_answers_to_its_vendor_only():
    s = broker.parse_site_map(site_map(gpus=[{"vendor": "NVIDIA", "model": None, "pci_id": "10de:2321"},
                                             {"vendor": "NVIDIA", "pci_address": "0000:81:00.0"},
                                             {"vendor": "AMD", "model": "Radeon Instinct MI50 32GB"}]))
    assert [g.model for g in s.gpus] == [None, None, "Radeon Instinct MI50 32GB"]
    assert s.gpus[0].pci_id == "10de:2321" and s.gpus[1].pci_address == "0000:81:00.0"
    assert broker.matching_gpus(s, None) == 3 and broker.matching_gpus(s, "nvidia") == 2
    assert broker.matching_gpus(s, "H100") == 0 and broker.matching_gpus(s, "NVIDIA H100") == 0
    assert broker.misfit(cand(1, gpus=3), s) is None and broker.misfit(cand(1, gpus=2, gpu_name="NVIDIA"), s) is None
    why = broker.misfit(cand(1, gpus=1, gpu_name="H100"), s)
    assert why == ("needs 1 GPU(s) matching 'H100', slot has 0 (and 2 of unknown model, NVIDIA, NVIDIA 10de:2321, "
                   "which answer to a vendor, never to a model: a node names its GPUs' models from its pci.ids); "
                   "free: 1x AMD Radeon Instinct MI50 32GB, 2x NVIDIA")
    # Where the GPUs of unknown model could not be the one asked for anyway, they are not mentioned.
    assert broker.misfit(cand(1, gpus=3, gpu_name="NVIDIA"), s) == \
        "needs 3 GPU(s) matching 'NVIDIA', slot has 2; free: 1x AMD Radeon Instinct MI50 32GB, 2x NVIDIA"
    assert broker.site_attributes(s)["GPUModels"] == ["NVIDIA", "NVIDIA", "AMD Radeon Instinct MI50 32GB"]


def test_rank_is_priority_then_price_then_age():
    jobs = [cand(1), cand(2, price=2.0), cand(3, priority=5), cand(4, price=2.0), cand(5, priority=5, price=0.5)]
    assert [j.id for j in broker.rank(jobs)] == [3, 5, 2, 4, 1]


def test_choose_evaluates_each_requirements_text_once():
    s = broker.parse_site_map(site_map(ce="CE1"))
    attrs = broker.site_attributes(s)
    no = 'other.CE == "CE2"'
    yes = 'other.CE == "CE1"'
    calls = []

    class CountingCache(broker.RequirementCache):
        def compile(self, req_hash, text):
            calls.append(text)
            return super().compile(req_hash, text)

    cache, verdicts = CountingCache(), {}
    jobs = [cand(i, no) for i in range(1, 6)] + [cand(6, yes), cand(7, yes, cores=100)]
    assert broker.choose(jobs, s, attrs, cache, verdicts).id == 6
    assert calls == [no, yes]
    assert verdicts == {broker.requirements_hash(no): False, broker.requirements_hash(yes): True}
    # Carried over: the next call for the same site map evaluates nothing again.
    assert broker.choose([cand(8, no), cand(9, yes)], s, attrs, cache, verdicts).id == 9
    assert calls == [no, yes]
    assert broker.choose([cand(10, "other.TTL > ")], s, attrs, cache, {}) is None, "an unparsable text never matches"


def test_example_jobs_match_where_they_should():
    """The examples' Requirements against site maps shaped like the sites they were written for."""
    def needs(name):
        job = load(EXAMPLES / name)
        n = broker.needs_of(job)
        return Cand(1, n.cores, n.memory_mb, n.disk_mb, n.ttl, n.gpus, n.gpu_name, n.price, 0, 0.0,
                    job.user or "alice", n.requirements, n.req_hash)

    def ok(c, **sm):
        s = broker.parse_site_map(site_map(**sm))
        return broker.choose([c], s, broker.site_attributes(s), broker.RequirementCache(), {}) is not None

    reco = needs("reco_async_multicore.jdl")
    assert ok(reco, partition="multicore_8", ttl=40000, memory_mb=80000, close_se=["ALICE::CERN::EOS"])
    assert not ok(reco, partition="multicore_8", ttl=40000, memory_mb=80000, close_se=["ALICE::FZK::SE"])
    assert not ok(reco, partition="multicore_8", ttl=40000, memory_mb=80000, cores=4, close_se=["ALICE::CERN::EOS"])
    gpu = needs("gpu_reco_epn.jdl")
    mi50 = [{"vendor": "AMD", "model": "Radeon Instinct MI50 32GB"}]
    big = dict(cores=16, memory_mb=128000, disk_mb=200000, ttl=20000)
    assert ok(gpu, partition="gpu", gpus=mi50, **big)
    assert not ok(gpu, partition="gpu", gpus=mi50, ce="ALICE::CERN::CERN-SIRIUS", **big)
    assert not ok(gpu, partition="gpu", gpus=[{"vendor": "NVIDIA", "model": "A100"}], **big)
    hm = needs("highmem_calibration.jdl")
    assert ok(hm, partition="highmem", cores=8, memory_mb=130000, disk_mb=300000, ttl=90000)
    assert not ok(hm, partition="highmem", cores=8, memory_mb=130000, disk_mb=150000, ttl=90000)
    demo = needs("local_demo.jdl")
    assert not ok(demo, ce="local", ttl=100), "TTL 120 does not fit in 100 s left"
    assert ok(demo, ce="local", ttl=130)


sites = st.builds(
    broker.Site,
    ttl=st.none() | st.integers(0, 10 ** 6).map(float),
    cores=st.none() | st.integers(0, 128),
    memory_mb=st.none() | st.integers(0, 10 ** 6).map(float),
    disk_mb=st.none() | st.integers(0, 10 ** 7).map(float),
    gpus=st.lists(st.builds(broker.Gpu, st.sampled_from(["AMD", "NVIDIA"]), st.just("X")), max_size=3).map(tuple),
    users=st.lists(st.sampled_from(["alice", "bob"]), max_size=2).map(tuple),
    nousers=st.lists(st.sampled_from(["alice", "bob"]), max_size=2).map(tuple),
)
cands = st.builds(Cand, id=st.just(1), cores=st.integers(1, 128), memory_mb=st.integers(0, 10 ** 6),
                  disk_mb=st.integers(0, 10 ** 7), ttl=st.integers(1, 10 ** 6), gpus=st.integers(0, 4),
                  user=st.sampled_from(["alice", "bob"]))


@given(sites, cands)
def test_sql_limits_agree_with_misfit(site, c):
    """What matching.match filters in SQL is exactly misfit() when the job names no GPU model."""
    lim = broker.sql_limits(site)
    in_sql = ((lim.max_cores is None or c.cores <= lim.max_cores)
              and (lim.max_ttl is None or c.ttl <= lim.max_ttl)
              and (lim.max_memory_mb is None or c.memory_mb <= lim.max_memory_mb)
              and (lim.max_disk_mb is None or c.disk_mb <= lim.max_disk_mb)
              and c.gpus <= lim.max_gpus
              and (not lim.users or c.user in lim.users)
              and c.user not in lim.nousers)
    assert in_sql == (broker.misfit(c, site) is None)


# -- what Requirements may cost the broker --


def never_here(tag: str, nodes: int) -> str:
    """An `||` of CE comparisons that never holds on site_map(), of about `nodes` nodes."""
    return " || ".join(f'other.CE == "NOWHERE::{tag}::{k}"' for k in range(max(1, (nodes - 1) // 3)))


def test_requirements_are_bounded_at_submission_naming_the_bound_and_the_line():
    at_bound = parse_job(jdl(Requirements=Raw(never_here("a", broker.MAX_REQUIREMENTS_NODES))))
    assert broker.needs_of(at_bound).requirements is not None
    for text, bound in [(never_here("b", broker.MAX_REQUIREMENTS_NODES + 3), "at most 1,000"),
                        (f'other.CE == "{"x" * broker.MAX_REQUIREMENTS_CHARS}"', "at most 16,384")]:
        job = parse_job(jdl(TTL=60, Requirements=Raw(text)))
        with pytest.raises(JdlError, match="Requirements") as e:
            broker.needs_of(job)
        assert bound in e.value.message and (e.value.line, e.value.column) == (3, 1)


def test_a_stored_text_unparsable_or_over_the_bounds_matches_nowhere():
    s = broker.parse_site_map(site_map())
    over = [never_here("c", broker.MAX_REQUIREMENTS_NODES + 3), 'other.CE == "' + "x" * 20000 + '"', "other.TTL >"]
    for text in over:
        assert broker.compile_requirements(text) is None
    jobs = [cand(i, text) for i, text in enumerate(over, 1)] + [cand(9, "other.TTL > 0")]
    assert broker.choose(jobs, s, broker.site_attributes(s), broker.RequirementCache(), {}).id == 9


class CountingCache(broker.RequirementCache):
    def __init__(self):
        super().__init__()
        self.compiled_texts, self.evaluated = [], []

    def compile(self, req_hash, text):
        self.compiled_texts.append(req_hash)
        return super().compile(req_hash, text)

    def holds(self, req_hash, c, view, evaluate=True):
        ok, cost = super().holds(req_hash, c, view, evaluate)
        if cost:
            self.evaluated.append(req_hash)
        return ok, cost


def test_a_users_turn_ends_after_so_many_turn_downs_and_others_are_judged():
    s = broker.parse_site_map(site_map())
    mallory = [cand(i, f'other.CE == "NOWHERE{i}"', user="mallory") for i in range(1, 41)]
    bob = cand(100, 'other.TTL > 0', user="bob")
    cache, share = CountingCache(), broker.Share()
    assert broker.choose(mallory + [bob], s, broker.site_attributes(s), cache, {}, share=share) is bob
    assert len(cache.evaluated) == broker.USER_REJECTIONS + 1, "16 of mallory's texts, then bob's"
    assert share.resting == {"mallory"} and share.passed_over() == ["mallory"]
    assert share.new_turn() and share.passed_over() == [], "when the others are done, mallory's turn comes again"


def test_a_users_costly_requirements_are_judged_within_their_share_of_the_match():
    s = broker.parse_site_map(site_map())
    attrs = broker.site_attributes(s)
    costly = [cand(i, never_here(f"m{i}", broker.MAX_REQUIREMENTS_NODES), user="mallory") for i in range(1, 21)]
    bob = cand(100, 'other.TTL > 0', user="bob")
    # Not compiled in this process yet: a user may compile one such text per match (evaluated with it).
    cache = CountingCache()
    assert broker.choose(costly + [bob], s, attrs, cache, {}) is bob
    assert len(cache.compiled_texts) == 2 and cache.evaluated == cache.compiled_texts  # mallory's first, bob's
    # Compiled at submission (learn): evaluations of 1,000 nodes each, four to a user's share.
    cache = CountingCache()
    for c in costly:
        cache.learn(c.req_hash, parse_expression(c.requirements))
    share = broker.Share()
    assert broker.choose(costly + [bob], s, attrs, cache, {}, share=share) is bob
    assert len(cache.evaluated) == 4 + 1 and share.exhausted == {"mallory"}
    # The next match, on a site map that agrees on what these texts read (the CE), evaluates none of them again.
    s2 = broker.parse_site_map(site_map(ttl=5000, node="node7"))
    before = len(cache.evaluated)
    assert broker.choose(costly + [bob], s2, broker.site_attributes(s2), cache, {}) is bob
    # The first four are remembered false (turned down for nothing), the next four evaluated.
    assert [h for h in cache.evaluated[before:] if h != bob.req_hash] == [c.req_hash for c in costly[4:8]]


def test_the_match_as_a_whole_has_a_budget():
    s = broker.parse_site_map(site_map())
    cache = CountingCache()
    many = [cand(i, never_here(f"u{i}", broker.MAX_REQUIREMENTS_NODES), user=f"user{i}") for i in range(1, 41)]
    for c in many:
        cache.learn(c.req_hash, parse_expression(c.requirements))
    share = broker.Share()
    assert broker.choose(many, s, broker.site_attributes(s), cache, {}, share=share) is None
    assert len(cache.evaluated) == broker.MATCH_NODES // broker.MAX_REQUIREMENTS_NODES
    assert share.total_nodes >= broker.MATCH_NODES


def test_the_cache_keeps_at_most_its_nodes_least_recently_used_dropped_first():
    cache = broker.RequirementCache(nodes=2500)
    texts = [never_here(f"k{i}", broker.MAX_REQUIREMENTS_NODES) for i in range(5)]
    hashes = [broker.requirements_hash(t) for t in texts]
    for h, t in zip(hashes[:2], texts[:2]):
        cache.learn(h, parse_expression(t))
    assert cache.lookup(hashes[0])[0], "used: now the most recent"
    cache.compile(hashes[2], texts[2])
    assert [cache.knows(h) for h in hashes[:3]] == [True, False, True], "the least recently used went"
    for h, t in zip(hashes[3:], texts[3:]):
        cache.compile(h, t)
    assert [cache.knows(h) for h in hashes] == [False, False, False, True, True]
    small = broker.RequirementCache(size=3)
    for i in range(5):
        small.compile(str(i), f"other.TTL > {i}")
    assert [small.knows(str(i)) for i in range(5)] == [False, False, True, True, True]
