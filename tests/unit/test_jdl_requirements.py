"""The Requirements evaluator the broker uses: truth tables over a site map, undefined attributes, precedence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.errors import JdlError
from gridpilot.jdl import evaluate, parse_expression, write_expression
from gridpilot.jdl.requirements import SiteView, compile_expression, count_nodes

SITE = {
    "TTL": 86400,
    "Price": 1,
    "CE": "ALICE::CERN::CERN-SIRIUS",
    "CloseSE": ["ALICE::CERN::EOS", "ALICE::CERN::EOSALICEO2"],
    "GridPartitions": ["multicore_8", "highmem"],
    "Platform": "Linux-x86_64",
    "Packages": ["VO_ALICE@O2PDPSuite::async-v1", "VO_ALICE@jq::v1.6"],
    "Type": "machine",
    "LocalDiskSpace": 500_000_000,
    "GPUs": 0,
    "Cores": 8,
    "Load": 0.75,
    "HasCVMFS": True,
    "Draining": False,
    "Site": "CERN",
    "Version": "12",  # a numeric string
    "Weird": {"not": "a site value"},  # neither scalar nor list: undefined
    "NaN": math.nan,
    "Huge": 10**400,
    "Mixed": [5, "x"],  # not only strings: member compares item by item
}

CASES = [
    # the example, and the pieces of it
    ('other.TTL > 7200 && member(other.CloseSE, "ALICE::CERN::EOS") && other.Platform == "Linux-x86_64" '
     '&& !(other.CE == "A")', True),
    ("other.TTL > 7200", True),
    ("other.TTL > 86400", False),
    ("other.TTL >= 86400", True),
    ("other.TTL < 86401", True),
    ("other.TTL <= 86399", False),
    ("other.TTL == 86400", True),
    ("other.TTL != 86400", False),
    ("other.Load < 1", True),
    ("other.Load == 0.75", True),
    ("other.Price <= 1.0", True),
    ("other.TTL > -5", True),
    ("other.TTL > 1e4", True),
    # strings: equality is case-insensitive, as in ClassAd
    ('other.Platform == "Linux-x86_64"', True),
    ('other.Platform == "linux-X86_64"', True),
    ('other.Platform != "Linux-aarch64"', True),
    ('other.Site < "DESY"', True),
    ('other.Type == "machine"', True),
    # a numeric string compared with a number is read as a number
    ("other.Version > 9", True),
    ('other.Version == "12"', True),
    # lookup of attribute names is case-insensitive
    ("other.ttl > 7200", True),
    ('OTHER.platform == "Linux-x86_64"', True),
    # member, either argument order, lists and single values, case-insensitive
    ('member(other.CloseSE, "ALICE::CERN::EOS")', True),
    ('member(other.CloseSE, "alice::cern::eos")', True),
    ('member(other.CloseSE, "ALICE::FZK::SE")', False),
    ('member("ALICE::CERN::EOS", other.CloseSE)', True),
    ('member(other.GridPartitions, "multicore_8")', True),
    ('Member(other.GridPartitions, "multicore_4")', False),
    ('member(other.CE, "ALICE::CERN::CERN-SIRIUS")', True),
    ('member({"ALICE::CERN::CERN-SIRIUS", "ALICE::FZK::ARC"}, other.CE)', True),
    ('member({1, 2, 8}, other.Cores)', True),
    ('member(other.Packages, "VO_ALICE@jq::v1.6")', True),
    ('member(other.Packages, "vo_alice@JQ::V1.6")', True),
    ('member(other.Mixed, "5")', True),  # a numeric string equals the number 5
    ('member(other.Mixed, "X")', True),
    ('member("x", other.Mixed)', True),
    ('member(other.Mixed, "y")', False),
    ('member(other.Mixed, 5.0)', True),
    # booleans
    ("other.HasCVMFS", True),
    ("other.HasCVMFS == true", True),
    ("!other.Draining", True),
    ("other.Draining", False),
    ("other.HasCVMFS && !other.Draining", True),
    ("true", True),
    ("false", False),
    ("TRUE && True", True),
    # only true is true: a number or a string is not, in && and || as in !
    ("other.Cores || false", False),
    ("other.CE || other.Site", False),
    ("other.Cores && true", False),
    ("!other.Cores", True),
    # undefined attributes: every comparison with one is false, so a negated one is true
    ("other.Missing > 5", False),
    ("other.Missing < 5", False),
    ("other.Missing == 5", False),
    ("other.Missing != 5", False),
    ('other.Missing == "x"', False),
    ("!(other.Missing == 5)", True),
    ("other.Missing", False),
    ("!other.Missing", True),
    ('member(other.Missing, "x")', False),
    ('member(other.CloseSE, other.Missing)', False),
    ("other.Missing == other.Missing", False),
    ("other.Weird == 1", False),
    ("other.TTL > 5 || other.Missing > 5", True),
    ("other.TTL > 5 && other.Missing > 5", False),
    # mismatched types are false, never an exception
    ('other.TTL == "lots"', False),
    ('other.TTL != "lots"', False),
    ("other.HasCVMFS == 1", False),
    ("other.HasCVMFS > false", False),
    ("other.CloseSE == \"ALICE::CERN::EOS\"", False),
    ("other.NaN == other.NaN", False),
    ("other.NaN != 1", False),
    ("other.Huge > other.TTL", True),
    ("other.Huge > 1.5", True),
    # precedence: ! over comparisons over && over ||
    ("true || false && false", True),
    ("(true || false) && false", False),
    ("false && false || true", True),
    ("false && (false || true)", False),
    ("!true || true", True),
    ("!(true || true)", False),
    ('!other.CE == "A"', False),  # (!other.CE) == "A": a boolean against a string
    ('!(other.CE == "A")', True),
    ("(other.TTL > 5) == true", True),
    ("!!other.HasCVMFS", True),
    ('other.GPUs >= 1 || member(other.GridPartitions, "highmem") && other.LocalDiskSpace > 200000000', True),
    ('(other.GPUs >= 1 || member(other.GridPartitions, "highmem")) && other.LocalDiskSpace > 900000000', False),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:60] for c in CASES])
def test_expression(text: str, expected: bool) -> None:
    tree = parse_expression(text)
    assert evaluate(tree, SITE) is expected
    # The written form means the same.
    assert evaluate(parse_expression(write_expression(tree)), SITE) is expected


def test_strings_with_control_characters_are_not_numbers() -> None:
    # Python's \s takes U+001C-U+001F, which float() refuses: once a ValueError in the middle of matching (found by
    # tests/support/fuzz_jdl.py). They are strings, compared as strings.
    for odd in ("5\x1f", "\x1c5", "5\x1e\x1d"):
        assert evaluate(parse_expression("other.X > 1"), {"X": odd}) is False
        assert evaluate(parse_expression(f'"{odd}" > 1'), {}) is False
        assert evaluate(parse_expression(f'other.X == "{odd}"'), {"X": odd}) is True
    assert evaluate(parse_expression("other.X > 1"), {"X": " 5\t"}) is True  # ASCII blanks around a number are fine


def test_at_least_forty_expressions() -> None:
    assert len(CASES) >= 40


def test_empty_or_odd_site_maps_never_raise() -> None:
    tree = parse_expression('other.A > 1 && member(other.B, "x") || !other.C')
    assert evaluate(tree, {}) is True
    assert evaluate(tree, {1: 2, "a": None, "b": object()}) is True  # type: ignore[dict-item]


@pytest.mark.parametrize("text", ["", "other.TTL >", "member(other.X)", "other.TTL = 5", "1 2", "(", "x.y"])
def test_bad_expressions_are_jdl_errors(text: str) -> None:
    with pytest.raises(JdlError):
        parse_expression(text)


_SITE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.floats()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_EXPRESSIONS = st.sampled_from([c[0] for c in CASES])


@settings(max_examples=200, deadline=None)
@given(_EXPRESSIONS, st.dictionaries(st.sampled_from(list(SITE) + ["Missing", "ttl"]), _SITE_VALUES))
def test_evaluation_never_raises_whatever_the_site_map(text: str, site: dict) -> None:  # type: ignore[type-arg]
    assert evaluate(parse_expression(text), site) in (True, False)


# -- compiled once, verdicts keyed by what an expression can tell of a site --

_ATOMS = st.sampled_from([
    "other.TTL > 7200", "other.TTL == 3600", "7200 <= other.TTL", "other.TTL != 3600", "other.TTL < 3.6e3",
    'other.TTL < "9"', "other.B", "!other.B", "other.B == true", "other.B == 1", 'other.CE == "a"',
    "(other.B || false)", "!(other.TTL && true)",
    'member(other.L, "a")', 'member("B", other.L)', "member({1, 3600}, other.TTL)", "other.TTL == other.B",
])


def _combine(children):  # type: ignore[no-untyped-def]
    return st.one_of(
        st.tuples(children, children).map(lambda t: f"({t[0]} && {t[1]})"),
        st.tuples(children, children).map(lambda t: f"({t[0]} || {t[1]})"),
        children.map(lambda t: f"!({t})"),
    )


#: Values around the expressions' constants, and of every kind a site map may hold.
_POOL = [None, 5, 3600, 3600.0, "3600", 7200, 7201, "7200", 9, "9", "abc", True, False, 1, 1.0, math.nan, [1, "a"],
         "a", "A", ["a"], ["A", "b"], [], ["b", 1]]
_VALUES = st.sampled_from(_POOL)
#: Values a careless key would take for the same: Python's True == 1 == 1.0, numbers and numeric strings, cases.
_LOOKALIKES = [(True, 1), (True, 1.0), (1, 1.0), (3600, "3600"), (3600, 3600.0), (9, "9"), ("a", "A"), (["a"], ["A"]),
               (7200, 7201), (5, 3600), (3600, 7200), (False, 0), ([1, "a"], ["1", "a"])]
_PAIRS = st.one_of(st.sampled_from(_LOOKALIKES), st.tuples(_VALUES, _VALUES))


@settings(max_examples=1000, deadline=None)
@given(st.recursive(_ATOMS, _combine, max_leaves=4), st.sampled_from(["TTL", "B", "CE", "L"]), _PAIRS,
       st.dictionaries(st.sampled_from(["TTL", "B", "CE", "L"]), _VALUES))
def test_sites_with_equal_keys_get_equal_verdicts(text: str, name: str, pair: tuple,  # type: ignore[type-arg]
                                                 rest: dict) -> None:  # type: ignore[type-arg]
    """What the broker remembers a verdict under (SiteView.key of the expression's spec) never mixes up two site
    maps on which the expression differs: here, two that differ in one attribute."""
    a, b = dict(rest, **{name: pair[0]}), dict(rest, **{name: pair[1]})
    c = compile_expression(parse_expression(text))
    va, vb = SiteView(a), SiteView(b)
    assert c.holds(va) is evaluate(parse_expression(text), a)
    if va.key(c.spec) == vb.key(c.spec):
        assert c.holds(va) is c.holds(vb), (text, a, b)


def test_a_number_compared_only_with_numbers_is_keyed_by_where_it_falls() -> None:
    """So `other.TTL > 72000` has one verdict for every slot with more than 72000 s left."""
    c = compile_expression(parse_expression('other.TTL > 72000 && member(other.CloseSE, "ALICE::CERN::EOS")'))
    site = dict(SITE)
    keys = {SiteView(dict(site, TTL=t)).key(c.spec) for t in (86400, 80000, 72001, "80000")}
    assert len(keys) == 1
    assert SiteView(dict(site, TTL=72000)).key(c.spec) not in keys
    assert SiteView(dict(site, TTL=72000)).key(c.spec) != SiteView(dict(site, TTL=100)).key(c.spec)
    assert SiteView(dict(site, TTL=True)).key(c.spec) not in keys
    other_se = SiteView(dict(site, CloseSE=["ALICE::FZK::SE"]))
    assert other_se.key(c.spec) not in keys, "CloseSE is read as a whole"


def test_nodes_are_counted_as_the_broker_bounds_them() -> None:
    assert count_nodes(parse_expression("other.TTL > 7200")) == 3
    assert count_nodes(parse_expression('other.TTL > 7200 && member(other.CloseSE, "X")')) == 7
    assert count_nodes(parse_expression('member({"a", "b", "c"}, other.CE)')) == 6
    tree = parse_expression('!(other.A == 1) || other.B')
    assert count_nodes(tree) == compile_expression(tree).nodes == 6
