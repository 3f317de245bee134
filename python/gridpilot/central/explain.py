"""Why a job does not match a slot: the first clause of the broker's decision that fails, as `condor_q
-better-analyze` says it. Pure functions of a job row and a site map (no database, no clock); offers.py applies
them to the offers central kept.

The clauses are checked in the broker's own order (broker.misfit_clause: arch, cores, ttl, memory, disk, gpus,
users, cpu_level, avx, pilot_version, container: the last when the job or central requires a container and no
runtime starts one on the node), then the JDL's Requirements, then the container given back: where every clause of the broker holds but a pilot of that site and
CE took the job lately and gave it back because no container works for it there (the site requires one; the slot's
site map does not say which images it can run, so the broker cannot foresee it), the pilot's own words. For Requirements the answer narrows to the sub-expression that fails: the first
operand of an `&&` chain that does not hold, followed down while it is itself a chain; an `||`, a `!` or a
comparison is named whole. The slot's values of the attributes it reads are said beside it, so a user sees
`other.Arch == "aarch64"` and that the slot's Arch is "x86_64".
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from gridpilot.central import broker
from gridpilot.errors import JdlError
from gridpilot.jdl import Expr, parse_expression, write_expression
from gridpilot.jdl.nodes import And, Attribute, Call, Compare, ListValue, Not, Or
from gridpilot.jdl.requirements import SiteView, compile_expression

#: The clause when everything holds.
WOULD_MATCH = "would match"
#: Longest sub-expression text given back (a Requirements text may be 16 KB).
MAX_SUBEXPRESSION = 400
#: Attributes whose values are other users' names: never shown to a user asking why (the verdict is enough).
_PRIVATE = frozenset({"users", "nousers"})


def _holds(tree: Expr, view: SiteView) -> bool:
    return compile_expression(tree).holds(view)


def failing_part(tree: Expr, view: SiteView) -> Expr:
    """The smallest part of a Requirements tree that fails on the site and by itself makes the whole fail (`tree`
    must not hold there)."""
    while isinstance(tree, And):
        for operand in tree.operands:
            if not _holds(operand, view):
                tree = operand
                break
        else:
            break  # cannot happen for a chain that fails; the chain is the answer then
    return tree


def _attributes(tree: Expr, out: List[str]) -> List[str]:
    if isinstance(tree, Attribute):
        if tree.name not in out:
            out.append(tree.name)
    elif isinstance(tree, (And, Or)):
        for o in tree.operands:
            _attributes(o, out)
    elif isinstance(tree, Not):
        _attributes(tree.operand, out)
    elif isinstance(tree, Compare):
        _attributes(tree.left, out)
        _attributes(tree.right, out)
    elif isinstance(tree, Call):
        for a in tree.args:
            _attributes(a, out)
    elif isinstance(tree, ListValue):
        pass
    return out


def _shown(value: object) -> str:
    if value is None:
        return "undefined (the slot does not say)"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "{" + ", ".join(_shown(v) for v in value) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def requirements_clause(text: str, attrs: Dict[str, object]) -> Optional[Dict[str, Any]]:
    """Why the Requirements text fails on a site with these `other.*` attributes (broker.site_attributes), or None
    when it holds."""
    try:
        tree = parse_expression(text)
    except JdlError as e:
        # Stored before a bound or a grammar change: the broker matches it nowhere (broker.compile_requirements).
        return {"clause": "requirements", "reason": f"Requirements cannot be read ({e}); it matches no slot"}
    view = SiteView(attrs)
    if _holds(tree, view):
        return None
    part = failing_part(tree, view)
    sub = write_expression(part)
    if len(sub) > MAX_SUBEXPRESSION:
        sub = sub[:MAX_SUBEXPRESSION] + "..."
    lower = {k.lower(): v for k, v in attrs.items() if k.lower() not in _PRIVATE}
    names = _attributes(part, [])
    slot = "; ".join(f"other.{n} is not shown (other users' names)" if n.lower() in _PRIVATE
                     else f"other.{n} is {_shown(lower.get(n.lower()))}" for n in names[:8])
    reason = f"Requirements fail at {sub}" + (f" ({slot})" if slot else "")
    return {"clause": "requirements", "reason": reason, "subexpression": sub,
            "attributes": {n: lower.get(n.lower()) for n in names[:8]}}


def container_clause(site: broker.Site, given_back: Sequence[Tuple[str, str]]) -> Optional[Dict[str, Any]]:
    """The newest give-back (where: site/CE/node, the pilot's message) by a pilot of the slot's site and CE, as the
    container clause; None when there is none."""
    key = "/".join(x for x in (site.site, site.ce) if x)
    for where, message in reversed(given_back):
        if key and (where == key or where.startswith(key + "/")):
            node = where[len(key) + 1:]
            return {"clause": "container", "reason": f"a pilot{f' on {node}' if node else ''} took it and gave it "
                                                     f"back: {message}"}
    return None


def explain(job: Any, site: broker.Site, given_back: Sequence[Tuple[str, str]] = (),
            policy: broker.Policy = broker.DEFAULT_POLICY) -> Dict[str, Any]:
    """The first clause that fails for the job (a jobs row: JobNeeds' fields, `user` and `requirements`) on the
    site: {"clause", "reason"} (and for Requirements "subexpression", "attributes"); clause WOULD_MATCH when none.
    `given_back`: where and why pilots gave the job back for its container (offers.container_give_backs).
    `policy`: central's (broker.Policy), as the broker applies it."""
    found = broker.misfit_clause(job, site, policy)
    if found is not None:
        return {"clause": found[0], "reason": found[1]}
    text = getattr(job, "requirements", None)
    if text:
        failed = requirements_clause(text, broker.site_attributes(site))
        if failed is not None:
            return failed
    container = container_clause(site, given_back)
    if container is not None:
        return container
    return {"clause": WOULD_MATCH, "reason": "every clause holds: the next pilot of this shape can take it"}


__all__ = ["WOULD_MATCH", "container_clause", "explain", "failing_part", "requirements_clause"]
