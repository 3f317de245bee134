"""The README and docs/ as a whole: every page of docs/ is linked from the README, every link stays inside the
repository and reaches a file (and a heading, where it names one), the `make` targets the pages name exist, the
README's test command is the one CI runs, the figures are not older than their sources (tools/docs_figures.py writes
each source's hash into its figure; checked here without Graphviz or matplotlib), and docs/native.md's Python block
runs."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.paths import ROOT
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
sys.path.insert(0, str(ROOT / "tools"))
import docs_figures  # noqa: E402

#: A link or inline path: [text](target) or ![alt](target).
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```([A-Za-z0-9_ -]*)\n(.*?)^```\s*$", re.M | re.S)
#: What would point a reader outside the repository: the build machines' paths and the design notes that used to
#: live beside the checkout.
_OUTSIDE = ("/work/", "../shared", "ENVIRONMENT.md", "DESIGN.md")


def _links(page: Path) -> Iterator[str]:
    text = _FENCE.sub("", page.read_text())  # links inside code blocks are code, not links
    yield from _LINK.findall(text)


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set:
    text = _FENCE.sub("", page.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_short_and_links_every_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    linked = {(ROOT / t.split("#")[0]).resolve() for t in _links(README) if t.startswith("docs/")}
    unlinked = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"pages the README does not link: {unlinked}"
    assert PAGES, "no docs/*.md found"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_link_leaves_the_repository_and_every_link_lands(page: Path):
    text = page.read_text()
    for outside in _OUTSIDE:
        assert outside not in text, f"{page.name} refers to {outside!r}, outside the repository"
    for target in _links(page):
        assert "://" not in target and not target.startswith(("mailto:", "/", "~")), \
            f"{page.name} links outside the repository: {target}"
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        assert dest == ROOT or ROOT in dest.parents, f"{page.name}: {target} leaves the repository"
        assert dest.exists(), f"{page.name}: {target} names no file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading in {dest.name}"


def _make_targets() -> set:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))


def test_every_make_target_the_pages_name_exists():
    targets = _make_targets()
    for page in [README, *PAGES]:
        for target in re.findall(r"`make ([a-z][\w-]*)", page.read_text()):
            assert target in targets, f"{page.name} names `make {target}`, which the Makefile lacks"


def test_ci_runs_the_readmes_test_command():
    block = _FENCE.findall(README.read_text())[0][1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in ci, ".ci/run no longer runs the README's test command"


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    out, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out


def _figures() -> list[tuple[Path, Path]]:
    return [(DOCS / "pieces.svg", DOCS / "pieces.dot"),
            (DOCS / "bench_node_ratios.png", DOCS / "bench_node.json"),
            (DOCS / "compare.png", DOCS / "compare.json"),
            (DOCS / "simulate_grid.png", DOCS / "simulate_grid.json"),
            (DOCS / "bench_scale_cost.svg", DOCS / "bench_scale_cost.json")]


@pytest.mark.parametrize("figure,source", _figures(), ids=lambda p: p.name)
def test_the_figures_are_drawn_from_their_sources_as_they_are_now(figure: Path, source: Path):
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    if figure.suffix == ".svg":
        found = re.findall(rf"<!-- {docs_figures.SOURCE_KEY}: ([0-9a-f]+) -->", figure.read_text())
        assert found, f"{figure.name} carries no source hash: draw it with `make docs`"
        got = found[0]
    else:
        got = _png_text(figure).get(docs_figures.SOURCE_KEY, "")
    assert got == want, f"{figure.name} is older than {source.name}: run `make docs` and commit both"
    assert docs_figures.source_hash(source) == want


def test_every_figure_is_shown_on_a_page():
    shown = {(page.parent / t).resolve() for page in [README, *PAGES] for t in _links(page)}
    for figure, _ in _figures():
        assert figure.resolve() in shown, f"{figure.name} is drawn but no page shows it"


def test_the_native_pages_python_block_runs():
    blocks = [body for tag, body in _FENCE.findall((DOCS / "native.md").read_text()) if tag.strip() == "python"]
    assert len(blocks) == 1, "docs/native.md should have one ```python block"
    # In a child interpreter: the block signals process trees, which must not be the test runner's.
    check = blocks[0] + (
        "\nassert r.survivors == [] and len(r.terminated) + len(r.killed) == 3, r"
        "\nassert job.returncode is not None\n")
    res = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


#: The pages whose command blocks (```sh, ```console, ```python) a test runs, and that test. A block a reader is
#: told to type elsewhere is fenced ```text (a synopsis) or belongs on one of these pages.
EXECUTED = {
    "operators.md": "tests/integration/test_docs_operators.py",
    "benchmarks.md": "tests/integration/test_docs_benchmarks.py",
    "central.md": "tests/integration/test_quickstart.py",
    "native.md": "tests/integration/test_docs_pages.py",
    "users.md": "tests/integration/test_docs_users.py",
}


def test_only_pages_a_test_runs_have_command_blocks():
    for page in PAGES:
        tags = {tag.split()[0] for tag, _ in _FENCE.findall(page.read_text()) if tag.strip()}
        if tags & {"sh", "console", "python"}:
            assert page.name in EXECUTED, f"{page.name} has command blocks ({tags}) that no test runs"
            assert (ROOT / EXECUTED[page.name]).is_file()
            assert page.name in (ROOT / EXECUTED[page.name]).read_text(), \
                f"{EXECUTED[page.name]} does not read {page.name}"
