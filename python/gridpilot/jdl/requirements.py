"""Evaluate a Requirements expression against a site map. A pure function: the broker calls it for every match.

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

import math
import re
from typing import Dict, List, Mapping, Optional, Union

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


def _lower_keys(site: SiteMap) -> Dict[str, object]:
    try:
        return {k.lower(): v for k, v in site.items() if isinstance(k, str)}
    except Exception:  # a broken Mapping implementation: treat as an empty site, never fail the broker
        return {}


def _value(tree: Expr, site: Dict[str, object]) -> Val:
    if isinstance(tree, Attribute):
        return _from_site(site[tree.name.lower()]) if tree.name.lower() in site else UNDEFINED
    if isinstance(tree, String):
        return tree.value
    if isinstance(tree, Boolean):
        return tree.value
    if isinstance(tree, Number):
        return tree.value
    if isinstance(tree, ListValue):
        return [_value(i, site) for i in tree.items]  # type: ignore[misc]
    if isinstance(tree, Not):
        return not _truth(_value(tree.operand, site))
    if isinstance(tree, And):
        return all(_truth(_value(o, site)) for o in tree.operands)
    if isinstance(tree, Or):
        return any(_truth(_value(o, site)) for o in tree.operands)
    if isinstance(tree, Compare):
        return _compare(tree.op, _value(tree.left, site), _value(tree.right, site))
    if isinstance(tree, Call):
        if tree.name.lower() == "member" and len(tree.args) == 2:
            return _member(_value(tree.args[0], site), _value(tree.args[1], site))
        return UNDEFINED
    return UNDEFINED


def _truth(v: Val) -> bool:
    return v is True


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


def evaluate(tree: Expr, site: SiteMap) -> bool:
    """Whether the expression holds on `site`. Never raises for a tree made by the parser."""
    return _truth(_value(tree, _lower_keys(site)))
