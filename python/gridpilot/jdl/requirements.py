"""Evaluate a Requirements expression against a site map: pure functions, which the broker calls at every match.

`compile_expression(tree)` turns a tree into nested closures once (with its node count, and what it reads of a
site: `spec`); `SiteView(site)` prepares a site map once per match; `compiled.holds(view)` is the verdict, and two
site maps with equal `view.key(spec)` get the same verdict, so the broker may remember it. `evaluate(tree, site)`
does all three for one-off use.

Semantics (ClassAd-like, made total so that a bad site map or an odd JDL never raises):

- `other.<Key>` is looked up case-insensitively in the site map. A key that is missing, or whose value is not a
  string, number, boolean or list of those, is *undefined*.
- A comparison with an undefined side is false, whatever the operator (so `other.X != 1` is false too when X is
  missing). Numbers compare as numbers, and a numeric string compared with a number is read as one. Strings
  compare case-insensitively, as ClassAd's `==` does ("ALICE::CERN::EOS" == "alice::cern::eos"). Booleans only
  compare for (in)equality with booleans. Any other pairing of types is false.
- `&&`, `||` and `!` take true as true and anything else (false, undefined, a number, a string) as false.
- `member(list, value)` is true when the list holds an item equal (as `==` above) to value. The arguments may come
  in either order; a single string or number on the list side counts as a one-item list.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union

from gridpilot.jdl.nodes import (
    And,
    Attribute,
    Boolean,
    Call,
    Compare,
    Expr,
    ListValue,
    Not,
    Number,
    Or,
    String,
)

#: A site map: attribute name -> value. Values are str, int, float, bool, or lists/tuples of those.
SiteMap = Mapping[str, object]


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()

Scalar = Union[str, int, float, bool]
Val = Union[Scalar, List[Scalar], _Undefined]

# ASCII: \s would take U+001C-U+001F, which float() refuses (a ValueError in the middle of matching).
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$", re.ASCII)


def _from_site(v: object) -> Val:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple, set, frozenset)):
        items = [i for i in v if isinstance(i, (bool, int, float, str))]
        return items if len(items) == len(v) else UNDEFINED
    return UNDEFINED


def _as_number(v: Scalar) -> Optional[Union[int, float]]:
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (int, float)):
        return v  # ints stay ints: float() of a very large one would overflow
    if _NUMERIC.match(v):
        x = float(v)
        return None if math.isnan(x) else x
    return None


def _compare(op: str, a: Val, b: Val) -> bool:
    if isinstance(a, (_Undefined, list)) or isinstance(b, (_Undefined, list)):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        if not (isinstance(a, bool) and isinstance(b, bool)):
            return False
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        return False
    if isinstance(a, str) and isinstance(b, str):
        x: Union[str, int, float] = a.casefold()
        y: Union[str, int, float] = b.casefold()
    else:
        na, nb = _as_number(a), _as_number(b)
        if na is None or nb is None:
            return False
        x, y = na, nb
    if op == "==":
        return x == y
    if op == "!=":
        return x != y
    if op == "<":
        return x < y  # type: ignore[operator]
    if op == "<=":
        return x <= y  # type: ignore[operator]
    if op == ">":
        return x > y  # type: ignore[operator]
    if op == ">=":
        return x >= y  # type: ignore[operator]
    return False


def _member(a: Val, b: Val) -> bool:
    items: List[Scalar]
    if isinstance(a, list):
        if isinstance(b, list):
            return False
        items, value = a, b
    elif isinstance(b, list):
        items, value = b, a
    elif isinstance(a, _Undefined):
        return False
    else:
        items, value = [a], b
    return any(_compare("==", i, value) for i in items)


class SiteView:
    """A site map made ready for many evaluations: keys lower-cased and values checked once, not per expression.

    The broker builds one per match and evaluates every candidate's Requirements against it. It also keeps, per list
    attribute, its items case-folded into a set (so `member(other.Packages, "...")` costs one lookup however long the
    site's list), and per expression's `KeySpec` the key its verdict may be remembered under (`key`).
    """

    __slots__ = ("values", "_folded", "_keys", "_exact")

    def __init__(self, site: SiteMap) -> None:
        try:
            self.values: Dict[str, Val] = {k.lower(): _from_site(v) for k, v in site.items() if isinstance(k, str)}
        except Exception:  # a broken Mapping implementation: treat as an empty site, never fail the broker
            self.values = {}
        self._folded: Dict[str, Optional[FrozenSet[str]]] = {}
        self._keys: Dict[int, Tuple[KeySpec, Tuple[object, ...]]] = {}
        self._exact: Dict[str, object] = {}

    def folded_strings(self, name: str) -> Optional[FrozenSet[str]]:
        """The attribute's items case-folded, when it is a list of strings only (else None)."""
        try:
            return self._folded[name]
        except KeyError:
            pass
        v = self.values.get(name)
        out: Optional[FrozenSet[str]] = None
        if isinstance(v, list) and all(isinstance(i, str) for i in v):
            out = frozenset(str(i).casefold() for i in v)
        self._folded[name] = out
        return out

    def key(self, spec: KeySpec) -> Tuple[object, ...]:
        """What an expression with this KeySpec can tell of this site: two site maps with equal keys get the same
        verdict from it. Exact values (a boolean told from a number, 1 from 1.0), except for an attribute the
        expression only compares with numbers: then only where its value falls among those numbers, so
        `other.TTL > 72000` has one key for every slot with more than 72000 s left."""
        # By the spec's identity: hashing a spec (hundreds of numbers, for some) would cost more than the lookup.
        # The spec is kept next to its key, so its id cannot be reused by another while it is here.
        got = self._keys.get(id(spec))
        if got is not None and got[0] is spec:
            return got[1]
        k = tuple(self.exact(name) if numbers is None else _interval(self.values.get(name), numbers)
                  for name, numbers in spec)
        self._keys[id(spec)] = (spec, k)
        return k

    def exact(self, name: str) -> object:
        """The attribute's value as part of a key: its type with it (so True, 1 and 1.0 differ), a list as a digest
        of its typed items (a site's list of packages may hold thousands, and a key is kept with each verdict)."""
        try:
            return self._exact[name]
        except KeyError:
            pass
        v = self.values.get(name, UNDEFINED)
        if isinstance(v, list):
            typed = repr(tuple((type(i).__name__, i) for i in v)).encode()
            out: object = ("list", hashlib.blake2b(typed, digest_size=16).digest())
        else:
            out = (type(v).__name__, v)
        self._exact[name] = out
        return out


#: Per attribute an expression reads (lower-case name, sorted): the numbers it is only ever compared with (sorted,
#: distinct), or None when it is used in any other way (its whole value then matters).
KeySpec = Tuple[Tuple[str, Optional[Tuple[Union[int, float], ...]]], ...]


def _interval(v: object, numbers: Tuple[Union[int, float], ...]) -> object:
    """Where v lies among `numbers`, which settles every comparison of v with them (as _compare makes it)."""
    x = _as_number(v) if isinstance(v, (str, int, float)) else None
    if x is None:
        return ("none",)  # not a number (a boolean, NaN, a list, missing): every comparison with a number is false
    i = bisect.bisect_left(numbers, x)
    return ("at", i, i < len(numbers) and numbers[i] == x)


#: A compiled expression node: its value on a site.
_Fn = Callable[[SiteView], Val]


@dataclass(frozen=True)
class CompiledRequirements:
    """An expression compiled once into nested closures, with what the broker needs to know of its cost.

    `holds(view)` is `evaluate(tree, site)` for `view = SiteView(site)`. `nodes` counts the tree's nodes (list
    items included): an evaluation visits at most that many. A verdict depends only on `view.key(spec)`.
    """

    holds: Callable[[SiteView], bool]
    nodes: int
    spec: KeySpec


class _Reads:
    """What a compiled expression reads of the site: per attribute, the numbers it is compared with, or opaque."""

    def __init__(self) -> None:
        self.numbers: Dict[str, Set[Union[int, float]]] = {}
        self.opaque: Set[str] = set()

    def spec(self) -> KeySpec:
        return tuple((n, None if n in self.opaque else tuple(sorted(self.numbers[n])))
                     for n in sorted(self.opaque | set(self.numbers)))


def compile_expression(tree: Expr) -> CompiledRequirements:
    reads = _Reads()
    fn, nodes = _compile(tree, reads)
    return CompiledRequirements(lambda view: fn(view) is True, nodes, reads.spec())


def count_nodes(tree: Expr) -> int:
    """The number of nodes of the tree, list items included."""
    if isinstance(tree, (And, Or)):
        return 1 + sum(count_nodes(o) for o in tree.operands)
    if isinstance(tree, Not):
        return 1 + count_nodes(tree.operand)
    if isinstance(tree, Compare):
        return 1 + count_nodes(tree.left) + count_nodes(tree.right)
    if isinstance(tree, Call):
        return 1 + sum(count_nodes(a) for a in tree.args)
    if isinstance(tree, ListValue):
        return 1 + len(tree.items)
    return 1


def _constant(tree: Expr) -> Optional[Val]:
    """The value of a literal (None for anything else)."""
    if isinstance(tree, (String, Boolean, Number)):
        return tree.value
    if isinstance(tree, ListValue):
        items = [_constant(i) for i in tree.items]
        return None if any(i is None for i in items) else items  # type: ignore[return-value]
    return None


def _compile(tree: Expr, reads: _Reads) -> Tuple[_Fn, int]:
    const = _constant(tree)
    if const is not None:
        return (lambda _view: const), count_nodes(tree)
    if isinstance(tree, Attribute):
        name = tree.name.lower()
        reads.opaque.add(name)
        return (lambda view: view.values.get(name, UNDEFINED)), 1
    if isinstance(tree, Not):
        inner, n = _compile(tree.operand, reads)
        return (lambda view: inner(view) is not True), n + 1
    if isinstance(tree, (And, Or)):
        compiled = [_compile(o, reads) for o in tree.operands]
        parts = tuple(f for f, _ in compiled)
        n = 1 + sum(k for _, k in compiled)
        if isinstance(tree, And):
            def every(view: SiteView) -> Val:
                for p in parts:
                    if p(view) is not True:
                        return False
                return True
            return every, n

        def some(view: SiteView) -> Val:
            for p in parts:
                if p(view) is True:
                    return True
            return False
        return some, n
    if isinstance(tree, Compare):
        for attr, other in ((tree.left, tree.right), (tree.right, tree.left)):
            if isinstance(attr, Attribute) and isinstance(other, Number):
                number = _as_number(other.value)
                if number is not None:
                    reads.numbers.setdefault(attr.name.lower(), set()).add(number)
                    name = attr.name.lower()
                    get: _Fn = lambda view: view.values.get(name, UNDEFINED)  # noqa: E731
                    fixed: _Fn = lambda _view: number  # noqa: E731
                    left, right = (get, fixed) if attr is tree.left else (fixed, get)
                    op = tree.op
                    return (lambda view: _compare(op, left(view), right(view))), 3
        (left, nl), (right, nr) = _compile(tree.left, reads), _compile(tree.right, reads)
        op = tree.op
        return (lambda view: _compare(op, left(view), right(view))), nl + nr + 1
    if isinstance(tree, Call):
        compiled = [_compile(a, reads) for a in tree.args]
        n = 1 + sum(k for _, k in compiled)
        if tree.name.lower() != "member" or len(compiled) != 2:
            return (lambda _view: UNDEFINED), n
        return _compile_member(tree.args, compiled[0][0], compiled[1][0]), n
    return (lambda _view: UNDEFINED), count_nodes(tree)


def _compile_member(args: Tuple[Expr, ...], first: _Fn, second: _Fn) -> _Fn:
    def generic(view: SiteView) -> Val:
        return _member(first(view), second(view))

    attr = next((a for a in args if isinstance(a, Attribute)), None)
    lit = next((a for a in args if isinstance(a, String)), None)
    if attr is None or lit is None:
        return generic
    # member(other.List, "value"), either order: when the site's list holds only strings, equality is a case-folded
    # string comparison with each item, i.e. a set lookup.
    name, folded = attr.name.lower(), lit.value.casefold()

    def lookup(view: SiteView) -> Val:
        items = view.folded_strings(name)
        return folded in items if items is not None else generic(view)

    return lookup


def evaluate(tree: Expr, site: SiteMap) -> bool:
    """Whether the expression holds on `site`. Never raises for a tree made by the parser."""
    return compile_expression(tree).holds(SiteView(site))
