"""The JDL syntax tree: a document of ordered entries, their values, and Requirements-style expressions.

Every node is a frozen dataclass. Source positions (`line`, `column`, counted from 1; 0 for nodes built in code)
take no part in equality, so `parse(write(doc)) == doc` compares meaning, not layout. Parentheses leave no node:
the writer puts back the ones the tree needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Iterator, Optional, Tuple, Union


@dataclass(frozen=True)
class String:
    """A quoted string, escapes already decoded."""

    value: str
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Number:
    """A number, kept as written (`3600`, `-1.5e3`) so that writing it back changes nothing."""

    text: str
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)

    @property
    def value(self) -> Union[int, float]:
        """The number: an int when written without a fraction or exponent, else a float (possibly inf)."""
        if any(c in self.text for c in ".eE"):
            return float(self.text)
        return int(self.text)


@dataclass(frozen=True)
class Boolean:
    """`true` or `false` (any case in the source)."""

    value: bool
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


Scalar = Union[String, Number, Boolean]


@dataclass(frozen=True)
class ListValue:
    """`{ item, ... }`: strings, numbers or booleans."""

    items: Tuple[Scalar, ...]
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Attribute:
    """`other.<name>`: an attribute of the site map, looked up case-insensitively; `name` keeps its spelling."""

    name: str
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    """`!operand`."""

    operand: Expr
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class And:
    """`a && b && ...`: one node for a whole chain, so long chains do not nest deeply."""

    operands: Tuple[Expr, ...]
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Or:
    """`a || b || ...`."""

    operands: Tuple[Expr, ...]
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


COMPARISON_OPERATORS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Compare:
    """`left op right` with op one of COMPARISON_OPERATORS."""

    op: str
    left: Expr
    right: Expr
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


#: Functions an expression may call, by lower-case name, with their number of arguments.
FUNCTIONS: Dict[str, int] = {"member": 2}


@dataclass(frozen=True)
class Call:
    """`name(args...)`; `name` keeps its spelling and is matched case-insensitively against FUNCTIONS."""

    name: str
    args: Tuple[Expr, ...]
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


Expr = Union[String, Number, Boolean, ListValue, Attribute, Not, And, Or, Compare, Call]


@dataclass(frozen=True)
class Expression:
    """An unquoted value that is more than a literal, such as `Requirements = other.TTL > 7200 && ...;`.

    `source` is the text as the user wrote it (None when built in code); the writer prefers it so a written file
    keeps the user's layout. Only `tree` takes part in equality.
    """

    tree: Expr
    source: Optional[str] = field(default=None, compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


Value = Union[String, Number, Boolean, ListValue, Expression]


@dataclass(frozen=True)
class Entry:
    """`key = value;` with the key spelled as the user wrote it."""

    key: str
    value: Value
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class JdlDocument:
    """A parsed JDL: its entries in order. Keys are looked up case-insensitively and are unique that way.

    `bracketed` records whether the text was wrapped in `[ ... ]`; the writer keeps that, equality ignores it.
    """

    entries: Tuple[Entry, ...] = ()
    bracketed: bool = field(default=False, compare=False)
    _index: Dict[str, int] = field(init=False, compare=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        index: Dict[str, int] = {}
        for i, e in enumerate(self.entries):
            k = e.key.lower()
            if k in index:
                raise ValueError(f"duplicate key {e.key!r} in JdlDocument")
            index[k] = i
        object.__setattr__(self, "_index", index)

    def entry(self, key: str) -> Optional[Entry]:
        """The entry for `key` (any case), or None."""
        i = self._index.get(key.lower())
        return None if i is None else self.entries[i]

    def get(self, key: str) -> Optional[Value]:
        """The value for `key` (any case), or None."""
        e = self.entry(key)
        return None if e is None else e.value

    def with_value(self, key: str, value: Value) -> JdlDocument:
        """A copy with `key` set to `value`: replaced in place (keeping the key's spelling) or appended."""
        i = self._index.get(key.lower())
        if i is None:
            entries = self.entries + (Entry(key, value),)
        else:
            entries = self.entries[:i] + (replace(self.entries[i], value=value),) + self.entries[i + 1 :]
        return JdlDocument(entries, self.bracketed)

    def without(self, key: str) -> JdlDocument:
        """A copy without `key` (unchanged when absent)."""
        return JdlDocument(tuple(e for e in self.entries if e.key.lower() != key.lower()), self.bracketed)

    def keys(self) -> Tuple[str, ...]:
        """The keys as written, in order."""
        return tuple(e.key for e in self.entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
