"""What ships in the wheel (the extension, its stub and the py.typed marker), and what it has a worker node install."""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

import pytest
from support import paths

ROOT = paths.ROOT


def test_wheel_ships_stub_and_marker(gridpilot_wheel):
    wheel = gridpilot_wheel
    assert "-cp39-abi3-" in wheel.name, "one abi3 wheel serves Python >= 3.9"
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert {"gridpilot/_native.pyi", "gridpilot/py.typed", "gridpilot/_native.abi3.so"} <= names
    # What pip installs with the wheel: the Requires-Dist lines that no extra conditions.
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1] for line in archive.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    assert {_name(r) for r in requires if "extra ==" not in r} == WORKER_NODE_DEPENDENCIES, requires


def test_wheel_ships_the_web_views_templates_and_static_files(gridpilot_wheel):
    # Read through the package (PackageLoader, StaticFiles' directory): a wheel without them serves 500s at /ui/.
    ui = ROOT / "python" / "gridpilot" / "central" / "ui"
    wanted = {f"gridpilot/central/ui/{p.relative_to(ui)}" for d in ("templates", "static") for p in (ui / d).rglob("*")
              if p.is_file()}
    assert any(n.endswith(".html") for n in wanted) and any(n.endswith(".css") for n in wanted), wanted
    names = set(zipfile.ZipFile(gridpilot_wheel).namelist())
    assert wanted <= names, sorted(wanted - names)


def test_only_the_abi3_extension_is_importable():
    # A stale per-version build (…cpython-311-….so) would shadow the abi3 one.
    from gridpilot import _native

    assert _native.__file__.endswith("_native.abi3.so")
    stale = [p.name for p in (ROOT / "python" / "gridpilot").glob("_native*.so") if "abi3" not in p.name]
    assert stale == []


#: What a worker node installs with the pilot, besides the native extension in the same wheel.
WORKER_NODE_DEPENDENCIES = {"orjson", "pyyaml", "urllib3"}


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def test_the_worker_node_dependencies_stay_few_and_psutil_is_for_the_tests_only():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    assert "psutil" not in runtime, "nothing in python/gridpilot imports psutil: it belongs to the test extra"
    assert runtime == WORKER_NODE_DEPENDENCIES, "every worker node installs these: keep the pilot's set small"
    assert "psutil" in {_name(r) for r in project["optional-dependencies"]["test"]}
    for r in [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]:
        assert re.search(r">=\s*\d", r), f"{r!r}: every dependency pins its minimum version"


def _imports_psutil(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "psutil" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "psutil":
            return True
        # importlib.import_module("psutil") or __import__("psutil")
        if isinstance(node, ast.Constant) and node.value == "psutil":
            return True
    return False


def test_nothing_of_the_package_imports_psutil(tmp_path):
    sources = sorted((ROOT / "python" / "gridpilot").rglob("*.py"))
    assert len(sources) > 20, "the package's sources were found"
    assert [str(p.relative_to(ROOT)) for p in sources if _imports_psutil(p)] == []
    # The check itself sees each way of importing it.
    for line in ("import psutil", "import os, psutil.tests", "from psutil import Process",
                 "import importlib; importlib.import_module('psutil')"):
        probe = tmp_path / "probe.py"
        probe.write_text(line + "\n")
        assert _imports_psutil(probe), line
