"""The CVMFS-style tree of pilot installations (tools/cvmfs_tree.py, `make cvmfs-tree`): built from this checkout's
wheel, the same wheels give the same tree wherever it is built, a second run changes nothing, a version that differs
is refused and left whole unless --force, and a CE whose install_path is <root>/latest/<arch> runs a job to DONE
with a pilot of the tree (its own lib/, a plain CPython of the node, no compiler, no gridpilot of this checkout)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Dict

import psutil
import pytest
from support.paths import ROOT
from support.require import require_or_skip

from gridpilot.testing import LocalGrid

TOOL = ROOT / "tools" / "cvmfs_tree.py"
#: Shared with `make cvmfs-tree`: the dependency wheels are downloaded once per checkout.
WHEELHOUSE = ROOT / ".cache" / "cvmfs" / "wheelhouse"
ARCH = platform.machine()
PYTHON = "%d.%d" % sys.version_info[:2]
#: The node's interpreter the tree's venv links to: the one under this test's (virtual) environment.
NODE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cvmfs_tree", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--python", PYTHON, "--node-python", NODE_PYTHON, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheels(gridpilot_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with this checkout's wheel, its dependencies' wheels in WHEELHOUSE (fetched once)."""
    d = tmp_path_factory.mktemp("dist")
    shutil.copy(gridpilot_wheel, d)
    root = tmp_path_factory.mktemp("fetch") / "tree"
    got = run_tool("--root", str(root), "--wheels", str(d), "--wheelhouse", str(WHEELHOUSE), "--fetch", "--arch", ARCH)
    if got.returncode != 0 and "pip download failed" in got.stderr:
        require_or_skip(f"the dependency wheels could not be downloaded into {WHEELHOUSE}: {got.stderr[-500:]}")
    assert got.returncode == 0, got.stderr
    return d


def build(root: Path, wheels: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_tool("--root", str(root), "--wheels", str(wheels), "--wheelhouse", str(WHEELHOUSE), *extra)


def listing(root: Path) -> Dict[str, str]:
    return {line.split(" ", 1)[0]: line for line in _tool().listing(root)}


def test_the_same_wheels_give_the_same_tree_and_a_differing_version_is_refused(wheels, tmp_path):
    t0 = time.monotonic()
    first = build(tmp_path / "a" / "cvmfs", wheels)
    took = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    root = tmp_path / "a" / "cvmfs"
    (version,) = [p.name for p in root.iterdir() if p.name != "latest"]
    assert os.readlink(root / "latest") == version, "latest is a relative link to the version"
    env = root / version / ARCH
    assert (env / "bin" / "gridpilot").stat().st_mode & 0o111
    site = env / "lib" / f"python{PYTHON}" / "site-packages"
    assert os.readlink(env / "bin" / "python3") == NODE_PYTHON and (env / "pyvenv.cfg").exists()
    assert {p.name.split("-")[0] for p in site.glob("*.dist-info")} == {"gridpilot", "orjson", "pyyaml",
                                                                                   "urllib3"}
    assert not list(env.rglob("*.pyc")) and not (site / "bin").exists()
    print(f"tree for {ARCH} built in {took:.2f} s")

    # Elsewhere, later: byte for byte the same (modes and mtimes included).
    other = tmp_path / "b" / "elsewhere"
    assert build(other, wheels).returncode == 0
    before = listing(root)
    assert listing(other) == before
    assert [os.lstat(p).st_mtime for p in sorted(env.rglob("*"))] == \
        [os.lstat(p).st_mtime for p in sorted((other / version / ARCH).rglob("*"))]

    again = build(root, wheels)
    assert again.returncode == 0 and "identical; nothing to do" in again.stderr, again.stderr
    assert listing(root) == before

    # Someone changed the published version: refused, the version left as it was, no build directory left over.
    init = site / "gridpilot" / "__init__.py"
    init.write_text(init.read_text() + "# changed\n")
    changed = listing(root)
    refused = build(root, wheels)
    assert refused.returncode == 3 and "refusing (--force replaces it)" in refused.stderr, refused.stderr
    assert listing(root) == changed
    assert sorted(p.name for p in root.iterdir()) == sorted([version, "latest"]), "nothing half-built left"
    forced = build(root, wheels, "--force")
    assert forced.returncode == 0 and "replaced" in forced.stderr, forced.stderr
    assert listing(root) == before


def test_bad_arguments_are_named(wheels, tmp_path):
    got = build(tmp_path / "t", wheels, "--arch", "riscv64" if ARCH != "riscv64" else "x86_64")
    assert got.returncode == 2 and "--arch" in got.stderr and "no gridpilot" in got.stderr, got.stderr
    got = run_tool("--root", str(tmp_path / "t"), "--wheels", str(tmp_path))
    assert got.returncode == 2 and "no gridpilot-*-cp39-abi3-*.whl" in got.stderr, got.stderr
    assert not (tmp_path / "t").exists()


def test_a_ce_pointed_at_latest_runs_a_job_with_a_pilot_of_the_tree(wheels, tmp_path):
    root = tmp_path / "cvmfs"
    assert build(root, wheels).returncode == 0
    install = root / "latest" / ARCH
    site = str(install.resolve() / "lib" / f"python{PYTHON}" / "site-packages")
    with LocalGrid(tmp_path / "grid") as grid:
        job = grid.user.submit('Executable = "/bin/sh";\nArguments = "-c \'sleep 4; echo from-the-tree\'";\n'
                               'TTL = 120;\n')
        grid.start_ce(install_path=str(install))
        # While the job runs: its runner is the tree's venv's python, and the gridpilot it loaded is the tree's.
        deadline = time.monotonic() + 120
        runners = []
        while not runners:
            assert time.monotonic() < deadline, grid.user.get_job(job)
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info.get("cmdline") or []
                if cmd[:1] == [str(install.resolve() / "bin" / "python3")] and "runner" in cmd:
                    runners.append(p)
            time.sleep(0.3)
        # The native extension it loaded is the tree's, not this checkout's.
        natives = [m.path for m in runners[0].memory_maps() if "_native" in m.path]
        assert natives and all(n.startswith(site + os.sep) for n in natives), natives
        (done,) = grid.wait([job], 120)
        assert done["state"] == "DONE", (done, "\n".join(e["text"] for e in grid.user.trace(job)))
        grid.stop_ce()


@pytest.mark.after_wheels
@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_a_foreign_wheel_from_make_wheels_is_laid_out_from_this_machine(wheels, tmp_path, arch):
    """Run by `make test-arch`, after `make wheels` left this version's wheels in dist/."""
    version = next(p.name.split("-")[1] for p in wheels.glob("gridpilot-*.whl"))
    if not list((ROOT / "dist").glob(f"gridpilot-{version}-cp39-abi3-*_{arch}.whl")):
        if arch == "riscv64":
            # make wheels' one accepted skip: riscv64 when trixie and bookworm-security ship different rustc-web.
            pytest.skip(f"no gridpilot {version} riscv64 wheel in dist/ (make wheels skipped riscv64)")
        require_or_skip(f"no gridpilot {version} {arch} wheel in dist/ (make wheels)")
    # Where `make test-arch` left an emulated Debian Python of that arch (.cache/cross/pyroot), the venv links to
    # it and runs under qemu-user.
    pyroot = ROOT / ".cache" / "cross" / "pyroot" / arch
    python = pyroot / "usr" / "bin" / f"python{PYTHON}"
    emulated = python.exists() and shutil.which(f"qemu-{arch}") is not None
    root = tmp_path / "cvmfs"
    got = run_tool("--root", str(root), "--wheels", str(ROOT / "dist"), "--wheelhouse", str(WHEELHOUSE), "--fetch",
                   "--arch", arch, *(["--node-python", str(python)] if emulated else []))
    if arch == "riscv64":
        # PyPI publishes no riscv64 wheels of orjson or PyYAML: named, and nothing left behind.
        assert got.returncode == 1 and "pip download failed" in got.stderr, got.stderr
        assert not root.exists() or not [p for p in root.iterdir()], list(root.iterdir())
        return
    assert got.returncode == 0, got.stderr
    lib = root / version / arch / "lib" / f"python{PYTHON}" / "site-packages"
    natives = list(lib.glob("gridpilot/_native*.so"))
    # ELF e_machine (offset 18, little-endian): 183 is EM_AARCH64.
    assert natives and int.from_bytes(natives[0].read_bytes()[18:20], "little") == 183, natives
    assert list(lib.glob(f"orjson/*{arch}*.so")), "orjson's extension for that arch"
    if emulated:
        # The launcher's own command, with qemu in front (binfmt_misc may not be registered here).
        node = subprocess.run([f"qemu-{arch}", "-L", str(pyroot), str(root / "latest" / arch / "bin" / "python3"),
                               "-I", "-m", "gridpilot", "node"], capture_output=True, text=True, timeout=120,
                              env={"PATH": os.defpath})
        assert node.returncode == 0 and f'"arch": "{arch}"' in node.stdout, node.stdout + node.stderr
