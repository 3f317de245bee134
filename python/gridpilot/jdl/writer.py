"""A JdlDocument (or one value or expression) back to JDL text that parses to the same tree.

Keys keep the user's spelling; expressions keep the user's text when they came from a parse. Comments are not
part of the tree and are not written.
"""

from __future__ import annotations

from typing import List

from gridpilot.jdl.nodes import (
    And,
    Attribute,
    Boolean,
    Call,
    Compare,
    Expr,
    Expression,
    JdlDocument,
    ListValue,
    Not,
    Number,
    Or,
    String,
    Value,
)

# Lists longer than this (as one line) are written one item per line.
_INLINE_LIST_WIDTH = 80
_INDENT = "    "


def quote(s: str) -> str:
    """`s` as a JDL string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def write_expression(tree: Expr) -> str:
    """An expression tree as text, with the parentheses its shape needs (and a few more for readability)."""
    if isinstance(tree, String):
        return quote(tree.value)
    if isinstance(tree, Number):
        return tree.text
    if isinstance(tree, Boolean):
        return "true" if tree.value else "false"
    if isinstance(tree, ListValue):
        return "{" + ", ".join(write_expression(i) for i in tree.items) + "}"
    if isinstance(tree, Attribute):
        return "other." + tree.name
    if isinstance(tree, Call):
        return tree.name + "(" + ", ".join(write_expression(a) for a in tree.args) + ")"
    if isinstance(tree, Not):
        inner = write_expression(tree.operand)
        return "!" + (inner if _is_atom(tree.operand) else "(" + inner + ")")
    if isinstance(tree, Compare):
        return f"{_operand(tree.left)} {tree.op} {_operand(tree.right)}"
    if isinstance(tree, (And, Or)):
        # Comparisons bind tighter than && and ||, so they go bare. A nested chain needs parentheses to keep
        # its shape, except && inside ||; that one gets them anyway so the reader does not have to know.
        joiner = " && " if isinstance(tree, And) else " || "
        return joiner.join(
            "(" + write_expression(o) + ")" if isinstance(o, (And, Or)) else write_expression(o) for o in tree.operands
        )
    raise TypeError(f"not a JDL expression node: {tree!r}")


def _is_atom(tree: Expr) -> bool:
    return isinstance(tree, (String, Number, Boolean, ListValue, Attribute, Call, Not))


def _operand(tree: Expr) -> str:
    text = write_expression(tree)
    return text if _is_atom(tree) else "(" + text + ")"


def write_value(value: Value, indent: str = "") -> str:
    """One value as it appears after `Key = `."""
    if isinstance(value, Expression):
        return value.source if value.source is not None else write_expression(value.tree)
    if isinstance(value, ListValue):
        items = [write_expression(i) for i in value.items]
        if not items:
            return "{}"
        inline = "{ " + ", ".join(items) + " }"
        if len(inline) <= _INLINE_LIST_WIDTH and len(items) <= 4:
            return inline
        inner = indent + _INDENT
        return "{\n" + ",\n".join(inner + i for i in items) + "\n" + indent + "}"
    return write_expression(value)


def write(doc: JdlDocument) -> str:
    """The document as JDL text: one `Key = value;` per entry, in order, wrapped in [ ] if the source was."""
    indent = _INDENT if doc.bracketed else ""
    lines: List[str] = ["["] if doc.bracketed else []
    for e in doc.entries:
        lines.append(f"{indent}{e.key} = {write_value(e.value, indent)};")
    if doc.bracketed:
        lines.append("]")
    return "\n".join(lines) + "\n"
