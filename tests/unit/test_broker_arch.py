"""The broker on what a node can do (issue 20, section 3), pure: the table of support.arch_cases judged by
broker.choose (does the job match) and explain.explain (which clause `gridpilot why` names), which must agree, and
whose SQL narrowing (broker.sql_limits) must never leave out a job that matches; the JDL's new attributes and their
bad values; the site map's new keys and their bad values; pilot versions in PEP 440's order."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
from support.arch_cases import CASES, POLICIES, Case
from support.central import Raw, jdl, site_map

from gridpilot.central import broker, explain
from gridpilot.central.settings import CentralSettings
from gridpilot.errors import JdlError
from gridpilot.jdl import parse_job
from gridpilot.pilotversion import older_than, version_key


@dataclass(frozen=True)
class Row(broker.JobNeeds):
    """A queue row as the broker reads it (matching._CANDIDATE_COLUMNS): the job's needs, its id, user and rank."""

    id: int = 1
    user: str = ""
    priority: int = 0
    created: float = 0.0


def row_of(case: Case) -> Row:
    return Row(**asdict(broker.needs_of(parse_job(jdl(**case.job)))), user=case.user)


def policy_of(name: str) -> broker.Policy:
    return CentralSettings.from_args("/nonexistent", "sqlite://", **POLICIES[name]).broker_policy()


def agent_site(case: Case) -> broker.Site:
    sm = case.site_map()
    # As matching does for an agent that does not say its pilot's version.
    sm.setdefault("pilot_version", broker.UNSAID_VERSION)
    return broker.parse_site_map(sm)


def test_the_table_is_large_enough_and_covers_every_new_clause():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    assert {c.clause for c in CASES} >= {None, "arch", "cpu_level", "avx", "pilot_version", "container"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broker_table(case: Case):
    row, site, policy = row_of(case), agent_site(case), policy_of(case.policy)
    chosen = broker.choose([row], site, broker.site_attributes(site), broker.RequirementCache(), {}, policy=policy)
    said = explain.explain(row, site, (), policy)
    assert (chosen is not None) == (case.clause is None), said
    assert said["clause"] == (case.clause or explain.WOULD_MATCH), said
    refused = broker.site_refusal(site, policy)
    if refused is not None:
        # match() stops before reading the queue: only ever for a clause the table expects.
        assert refused[0] == case.clause
    if case.clause is None:
        lim = broker.sql_limits(site)
        assert lim.arch is None or row.arch in (None, lim.arch)
        assert row.cpu_level <= lim.max_cpu_level and (lim.container_ok or not row.require_container)


def test_the_reasons_say_what_was_asked_and_what_the_node_has():
    by_name = {c.name: c for c in CASES}

    def reason(name: str) -> str:
        c = by_name[name]
        return explain.explain(row_of(c), agent_site(c), (), policy_of(c.policy))["reason"]

    assert reason("x86_64 job (the default) never on aarch64") == "needs x86_64, node is aarch64"
    assert reason("CPULevel v3 not on a v2 node") == "needs x86-64-v3, node is x86-64-v2"
    assert "does not say its x86-64 level" in reason("CPULevel v4 not on a node that says no level")
    assert "production job (user 'aliprod') needs AVX" in reason("production job not on a node without AVX")
    assert reason("MinPilotVersion 2.0 not on pilot 1.5.0") == \
        "needs pilot 2.0 or newer (the job's MinPilotVersion), the pilot is 1.5.0"
    assert "does not say its version" in reason("MinPilotVersion not on a pilot that says none")
    assert "central's min_x86_level" in reason("strict: min_x86_level refuses a v2 node")
    assert "central's min_pilot_version" in reason("strict: min_pilot_version refuses pilot 1.9")
    assert "central's require_container" in reason("strict: require_container refuses a node without one")
    assert "RequireContainer" in reason("RequireContainer not where no runtime starts one")


def test_a_ce_probe_that_says_nothing_of_the_node_is_not_gated():
    """A CE's probe (no arch, no level, no runtimes, no version) counts the jobs its pilots may take: none of the
    node's clauses is checked, so the CE still submits pilots for them."""
    site = broker.parse_site_map({"cores": 8, "ttl": 86400})
    strict = policy_of("strict")
    for case in CASES:
        if case.clause in ("arch", "cpu_level", "avx", "pilot_version", "container") and case.node.get("arch") is None:
            assert broker.misfit_clause(row_of(case), site, strict) is None, case.name


def test_a_row_from_before_step_14_matches_any_arch():
    row = row_of(CASES[0])
    old = Row(**{**row.__dict__, "arch": None})
    site = broker.parse_site_map(site_map(**{"arch": "aarch64", "avx": False}))
    assert broker.misfit_clause(old, site) is None and broker.misfit_clause(row, site)[0] == "arch"


@pytest.mark.parametrize("keys, where, words", [
    ({"Arch": "sparc"}, "Arch", "is not an architecture gridpilot knows"),
    ({"Platform": "el9-mips"}, "Platform", "architectures: aarch64, ppc64le, riscv64, x86_64"),
    ({"CPULevel": "x86-64-v5"}, "CPULevel", "is not an x86-64 level"),
    ({"CPULevel": "fast"}, "CPULevel", "is not an x86-64 level"),
    ({"Arch": "aarch64", "CPULevel": "v3"}, "CPULevel", "CPULevel is an x86-64 level, but the job runs on aarch64"),
    ({"MinPilotVersion": "1.x"}, "MinPilotVersion", "is not a version"),
    ({"MinPilotVersion": "1" * 80}, "MinPilotVersion", "at most 64 characters"),
    ({"RequireContainer": "maybe"}, "RequireContainer", "must be true or false"),
    ({"Arch": "aarch64", "Platform": "el9-x86_64"}, "Arch", "Arch is 'aarch64' but Platform 'el9-x86_64'"),
])
def test_bad_values_are_refused_at_their_line(keys, where, words):
    text = jdl(**keys)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(where + " "))
    with pytest.raises(JdlError) as e:
        parse_job(text)
    assert words in str(e.value) and e.value.line == line


def test_the_job_arch_comes_from_arch_platform_packages_then_the_default():
    assert parse_job(jdl()).needed_arch == "x86_64"
    assert parse_job(jdl(Arch="arm64")).needed_arch == "aarch64"
    assert parse_job(jdl(Platform="alma9_aarch64")).needed_arch == "aarch64"
    assert parse_job(jdl(Packages=Raw('{"VO_ALICE@O2::x-el9-aarch64-1"}'))).needed_arch == "aarch64"
    # Packages naming two architectures say nothing: the default.
    two = Raw('{"A::1-slc9_aarch64-1", "B::1-slc9_x86-64-1"}')
    assert parse_job(jdl(Packages=two)).needed_arch == "x86_64"
    # Arch wins over the Packages' tag (Platform and Arch must agree).
    assert parse_job(jdl(Arch="riscv64", Packages=Raw('{"A::1-slc9_aarch64-1"}'))).needed_arch == "riscv64"


@pytest.mark.parametrize("over, field", [
    ({"x86_64_level": "v3"}, "x86_64_level"),
    ({"x86_64_level": "x86-64-v9"}, "x86_64_level"),
    ({"x86_64_level": 3}, "x86_64_level"),
    ({"cpu_features": "avx2"}, "cpu_features"),
    ({"cpu_features": ["x" * 65]}, "cpu_features"),
    ({"cpu_features": ["f"] * 257}, "cpu_features"),
    ({"pilot_version": "one"}, "pilot_version"),
    ({"pilot_version": 2}, "pilot_version"),
    ({"containers": [1]}, "containers"),
    ({"containers": ["podman"] * 1001}, "containers"),
])
def test_bad_site_map_keys_are_named(over, field):
    with pytest.raises(broker.SiteMapError) as e:
        broker.parse_site_map(site_map(**over))
    assert e.value.field == field


def test_site_attributes_offer_the_new_keys_to_requirements():
    attrs = broker.site_attributes(broker.parse_site_map(site_map(
        x86_64_level="x86-64-v4", cpu_features=["avx", "AVX2"], pilot_version="1.5.0", containers=["bwrap"])))
    assert (attrs["X86Level"], attrs["AVX2"], attrs["PilotVersion"], attrs["Containers"]) == (4, True, "1.5.0",
                                                                                              ["bwrap"])
    arm = broker.site_attributes(broker.parse_site_map(site_map(arch="aarch64", cpu_features=["sve"])))
    assert "AVX2" not in arm and arm["CPUFeatures"] == ["sve"]


@pytest.mark.parametrize("older, newer", [
    ("1.4.2", "1.4.10"), ("1.5.0.dev3", "1.5.0a1"), ("1.5.0a1", "1.5.0b2"), ("1.5.0rc1", "1.5.0"),
    ("1.5.0", "1.5.0.post1"), ("1.9", "2.0"), ("0", "0.0.1"), ("2.0", "1!0.1"),
])
def test_pilot_versions_sort_as_pep_440_says(older, newer):
    assert older_than(older, newer) and not older_than(newer, older)


def test_equal_versions_and_local_labels():
    assert version_key("1.5") == version_key("1.5.0") == version_key("1.5.0+g1234")
    assert not older_than("1.5.0+local", "1.5")
