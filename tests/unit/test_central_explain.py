"""`gridpilot why`'s explanation: the first clause of the broker's decision that fails for a job on a slot, with the
failing sub-expression of its Requirements and the slot's values beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import orjson
import pytest
from support.central import Raw, jdl, site_map

from gridpilot.central import broker, explain
from gridpilot.jdl import parse_job
from gridpilot.states import CONTAINER_GIVE_BACK


@dataclass(frozen=True)
class Row:
    """A jobs row as explain reads it (broker.JobNeeds' fields, user, requirements)."""

    cores: int
    memory_mb: int
    disk_mb: int
    ttl: int
    gpus: int
    gpu_name: Optional[str]
    requirements: Optional[str]
    user: str = "alice"


def row(**keys: object) -> Row:
    n = broker.needs_of(parse_job(jdl(**keys)))
    return Row(n.cores, n.memory_mb, n.disk_mb, n.ttl, n.gpus, n.gpu_name, n.requirements)


def why(job: Row, **over: object) -> dict:
    return explain.explain(job, broker.parse_site_map(site_map(**over)))


@pytest.mark.parametrize("keys, over, clause, words", [
    ({"CPUCores": 16}, {"cores": 8}, "cores", "needs 16 cores, slot has 8"),
    # The case: a TTL of 600 s under a CE whose slots have 600 s of wall time, less what has passed.
    ({"TTL": 600}, {"ttl": 540}, "ttl", "needs TTL 600 s, slot has 540 s left"),
    ({"MemorySize": "64GB"}, {"memory_mb": 32000}, "memory", "needs 65536 MB of memory, slot has 32000 MB"),
    ({"WorkDirectorySize": "500GB"}, {"disk_mb": 200000}, "disk", "needs 512000 MB of disk, slot has 200000 MB"),
    ({"GPU": "MI50"}, {"gpus": [{"vendor": "NVIDIA", "model": "A100"}]}, "gpus", "needs 1 GPU(s) matching 'MI50'"),
])
def test_each_resource_clause_is_named_with_both_sides(keys, over, clause, words):
    out = why(row(**keys), **over)
    assert out["clause"] == clause and words in out["reason"], out


def test_the_broker_order_decides_which_clause_is_first():
    # Both cores and TTL fail: the broker checks cores first, and so does the answer.
    out = why(row(CPUCores=16, TTL=90000), cores=8, ttl=3600)
    assert out["clause"] == "cores"
    assert why(row(CPUCores=8, TTL=90000), cores=8, ttl=3600)["clause"] == "ttl"


def test_arch_in_requirements_names_the_comparison_and_the_slot_value():
    job = row(Requirements=Raw('other.TTL > 100 && other.Arch == "aarch64" && other.CPUCores >= 1'))
    out = why(job, arch="x86_64")
    assert out["clause"] == "requirements"
    assert out["subexpression"] == 'other.Arch == "aarch64"'
    assert out["attributes"] == {"Arch": "x86_64"}
    assert 'other.Arch is "x86_64"' in out["reason"]


def test_platform_unsaid_by_the_slot_is_called_undefined():
    out = why(row(Requirements=Raw('other.Platform == "Linux-aarch64"')), platform=None)
    assert out["subexpression"] == 'other.Platform == "Linux-aarch64"'
    assert "other.Platform is undefined" in out["reason"]


def test_nested_chains_are_followed_down_but_an_or_is_named_whole():
    text = '(other.TTL > 100 && (member(other.CloseSE, "A::B::C") && other.Disk > 1)) && other.Memory > 1'
    out = why(row(Requirements=Raw(text)), close_se=["X::Y::Z"])
    assert out["subexpression"] == 'member(other.CloseSE, "A::B::C")'
    assert 'other.CloseSE is {"X::Y::Z"}' in out["reason"]
    either = why(row(Requirements=Raw('other.CPUCores > 8 || other.GPUs > 0')), cores=8)
    assert either["subexpression"] == "other.CPUCores > 8 || other.GPUs > 0"
    assert "other.CPUCores is 8" in either["reason"] and "other.GPUs is 0" in either["reason"]


def test_users_of_the_site():
    assert why(row(), users=["bob"])["clause"] == "users"
    assert why(row(), nousers=["alice"])["clause"] == "users"


def test_everything_holds_says_would_match():
    job = row(CPUCores=8, TTL=3600, Requirements=Raw('other.Arch == "x86_64"'))
    assert why(job)["clause"] == explain.WOULD_MATCH
    # And the explanation agrees with the broker's own verdict on the same pair.
    site = broker.parse_site_map(site_map())
    assert broker.misfit(job, site) is None


def test_an_unreadable_stored_text_matches_nowhere_and_says_so():
    out = explain.requirements_clause("other.TTL >", broker.site_attributes(broker.parse_site_map(site_map())))
    assert out is not None and out["clause"] == "requirements" and "cannot be read" in out["reason"]


def test_a_long_subexpression_is_cut():
    items = ", ".join(f'"SE::{i}::X"' for i in range(200))
    out = why(row(Requirements=Raw(f"member({{{items}}}, other.Site)")))
    assert len(out["subexpression"]) <= explain.MAX_SUBEXPRESSION + 3 and out["subexpression"].endswith("...")


def test_a_site_s_user_lists_are_never_shown():
    out = why(row(Requirements=Raw('member(other.Users, "alice")')), users=["bob", "carol"])
    # The site's users clause fails first, and says only that alice is not among them.
    assert out == {"clause": "users", "reason": "user 'alice' is not among the site's users"}
    out = why(row(Requirements=Raw('member(other.NoUsers, "zed")')), nousers=["bob"])
    assert out["clause"] == "requirements" and "bob" not in orjson.dumps(out).decode()
    assert "other.NoUsers is not shown" in out["reason"] and out["attributes"] == {"NoUsers": None}


def test_a_container_give_back_at_the_slot_s_site_and_ce_is_the_container_clause():
    """Every clause of the broker holds, but a pilot of this site and CE gave the job back because no container
    works for it there: that is the answer, in the pilot's words; a give-back elsewhere says nothing here."""
    site = broker.parse_site_map(site_map(site="S1", ce="S1::CE"))
    said = f"{CONTAINER_GIVE_BACK} (platform el7; image: ...): podman: image not found"
    out = explain.explain(row(), site, [("S1/S1::CE/wn7", said)])
    assert out == {"clause": "container", "reason": f"a pilot on wn7 took it and gave it back: {said}"}
    assert explain.explain(row(), site, [("S2/S2::CE/wn1", said), ("S1/S1::CE2/wn1", said)])["clause"] == \
        explain.WOULD_MATCH
    # A clause the broker checks comes first: the broker would not give it to this slot at all.
    assert explain.explain(row(CPUCores=64), site, [("S1/S1::CE/wn7", said)])["clause"] == "cores"
    assert explain.explain(row(Requirements=Raw('other.Arch == "riscv64"')), site,
                           [("S1/S1::CE/wn7", said)])["clause"] == "requirements"
    # The newest give-back is the one told.
    newer = said.replace("image not found", "no user namespaces")
    assert "no user namespaces" in explain.explain(row(), site, [("S1/S1::CE/wn7", said),
                                                                 ("S1/S1::CE/wn8", newer)])["reason"]
