"""The layering rules of docs/design.md that the pieces depend on, checked on the import statements of every module
(top-level and local imports alike): the pilot never imports central (it speaks HTTP through client.py, as to a
remote service), the tower neither central nor the pilot (it runs `gridpilot offline` on the node as a command
only), the ARC client nothing above the bottom layer, and central none of the pieces that call it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import gridpilot

PACKAGE = Path(gridpilot.__file__).parent

#: piece -> the gridpilot modules it must never import (a prefix matches the module and everything below it).
FORBIDDEN: Dict[str, Tuple[str, ...]] = {
    "pilot": ("gridpilot.central", "gridpilot.tower", "gridpilot.ce", "gridpilot.cli"),
    "tower": ("gridpilot.central", "gridpilot.pilot", "gridpilot.ce", "gridpilot.cli"),
    "arc": ("gridpilot.central", "gridpilot.pilot", "gridpilot.tower", "gridpilot.ce", "gridpilot.storage",
            "gridpilot.cli"),
    "central": ("gridpilot.pilot", "gridpilot.tower", "gridpilot.ce", "gridpilot.arc", "gridpilot.cli"),
    "ce": ("gridpilot.central", "gridpilot.pilot", "gridpilot.tower", "gridpilot.cli"),
    "storage": ("gridpilot.central", "gridpilot.pilot", "gridpilot.tower", "gridpilot.ce", "gridpilot.cli"),
}


def imported(path: Path) -> List[Tuple[int, str]]:
    """(line, module) of every `import x` and `from x import y` (y too, as x.y: it may be a module)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parent = module.split(".")[:-node.level]
                base = ".".join(parent + ([base] if base else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _breaches(piece: str) -> List[str]:
    out: Dict[str, str] = {}  # one entry per import statement, in order
    for path in sorted((PACKAGE / piece).rglob("*.py")):
        for line, name in imported(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[piece]):
                out.setdefault(f"{path.relative_to(PACKAGE.parent)}:{line}", name)
    return [f"{where} imports {name}" for where, name in out.items()]


@pytest.mark.parametrize("piece", sorted(FORBIDDEN))
def test_a_piece_imports_only_what_its_layer_allows(piece):
    assert (PACKAGE / piece).is_dir(), piece
    assert _breaches(piece) == []


def test_the_check_sees_a_breach(tmp_path, monkeypatch):
    """The rule is not vacuous: a module of the pilot importing central, at any depth and relatively, is found."""
    fake = tmp_path / "gridpilot"
    (fake / "pilot" / "deep").mkdir(parents=True)
    (fake / "pilot" / "deep" / "m.py").write_text(
        "def f():\n    from ...central import app\n    import gridpilot.central.db\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _breaches("pilot") == ["gridpilot/pilot/deep/m.py:2 imports gridpilot.central",
                                  "gridpilot/pilot/deep/m.py:3 imports gridpilot.central.db"]
