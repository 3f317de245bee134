#!/usr/bin/env python3
"""Lay out gridpilot's wheels as a CVMFS-style tree of ready-to-run pilot installations (`make cvmfs-tree`).

    <root>/<version>/<arch>/bin/gridpilot       the launcher a CE runs (`install_path` = <root>/<version>/<arch>)
    <root>/<version>/<arch>/bin/python3         -> the node's CPython (--node-python), with pyvenv.cfg: a venv
    <root>/<version>/<arch>/lib/python3.X/site-packages/   gridpilot and its worker-node dependencies, from wheels
    <root>/<version>/<arch>/gridpilot-env.json  what went in: version, arch, CPython, each RECORD's sha256
    <root>/latest -> <version>                  relative link (install_path = <root>/latest/<arch>)

Nothing is compiled here or at run time: pip unpacks wheels only (`--only-binary :all:`, `--no-index`, no bytecode),
for any architecture from this machine (pip's `--platform`). The tree is relocatable (only the node's interpreter
is at a fixed path): Python finds a venv from its executable's path, and the launcher finds that from its own real
path, so a version built in a temporary directory and renamed into place (atomic per version) runs wherever the
tree is published. The same input wheels give the same tree, byte for byte, mtimes included.
A version directory that exists is left alone: identical -> nothing to do, different -> refused unless --force.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ARCHES = ("x86_64", "aarch64", "riscv64")
#: The newest glibc a tree's dependency wheels may need (manylinux_2_<N>): Debian 11 / EL9 era worker nodes have
#: 2.31 or newer. pip does not expand a --platform tag to older ones, so each minor is named (platform_args).
_GLIBC_MINOR = 31
#: What the tree's files' mtimes are set to without SOURCE_DATE_EPOCH (zip's earliest date: 1980-01-01).
_DEFAULT_EPOCH = 315532800
_WHEEL = re.compile(r"^gridpilot-(?P<version>[^-]+)-cp39-abi3-(?P<platform>.+)\.whl$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_]{0,63}$")

#: Exit codes: 0 built or already identical; 1 failure; 2 bad arguments; 3 a different version directory exists.
EXIT_EXISTS = 3

LAUNCHER = """#!/bin/sh
# gridpilot {version} for {arch}, CPython {python} (the extension is abi3; orjson's wheel is for cp{nodot}).
# A virtual environment over the node's {node_python} (bin/python3 links to it; pyvenv.cfg): relocatable, found from
# this script's real path, so <root>/latest/{arch} pins the version it resolves to for the life of the process.
# -I: neither the working directory nor PYTHON* variables of the node change what is imported.
here=$(cd "$(dirname "$0")/.." && pwd -P) || exit {no_install}
if [ ! -x "$here/bin/python3" ]; then
    echo "gridpilot: $here needs CPython {python} at {node_python}, which this node lacks" >&2
    exit {no_install}
fi
exec "$here/bin/python3" -I -m gridpilot "$@"
"""
#: The pilot's start-up script's code for "no usable installation" (gridpilot.exitcodes.NO_INSTALL); copied, not
#: imported, so that this tool runs from any Python without gridpilot installed.
NO_INSTALL = 3


def log(msg: str) -> None:
    print(f"cvmfs-tree: {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_wheels(wheels: Path) -> Dict[Tuple[str, str], Path]:
    """gridpilot's wheels in a directory, by (version, arch)."""
    found: Dict[Tuple[str, str], Path] = {}
    for p in sorted(wheels.glob("gridpilot-*.whl")):
        m = _WHEEL.match(p.name)
        if not m:
            continue
        arch = next((a for a in ARCHES if m["platform"].endswith("_" + a)), None)
        if arch is not None:
            found.setdefault((m["version"], arch), p)
    return found


def platform_args(wheel: Path, arch: str) -> List[str]:
    """The platforms pip may take wheels for: manylinux up to glibc 2._GLIBC_MINOR (what the tree asks of a node) and
    whatever gridpilot's own wheel is tagged with (a plain `maturin build` tags this machine's glibc)."""
    m = _WHEEL.match(wheel.name)
    own = m["platform"].split(".") if m else []
    manylinux = [f"manylinux_2_{n}_{arch}" for n in range(_GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{arch}"]
    tags = dict.fromkeys([*manylinux, f"linux_{arch}", *own])
    return [arg for tag in tags for arg in ("--platform", tag)]


def pip_target_args(wheel: Path, arch: str, python: str) -> List[str]:
    return [*platform_args(wheel, arch), "--python-version", python, "--implementation", "cp",
            "--only-binary", ":all:"]


def fetch_dependencies(wheel: Path, arch: str, python: str, wheelhouse: Path) -> None:
    """Download the wheels gridpilot depends on for this arch and Python into the wheelhouse (the one step that
    uses the network; what is already there is reused)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(wheelhouse),
         "--find-links", str(wheel.parent), *pip_target_args(wheel, arch, python), str(wheel)],
        check=True)


def _isolated_pip_env() -> Dict[str, str]:
    """No pip configuration of this machine's (PIP_FIND_LINKS, pip.conf): only the wheels named here go in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def site_packages(dest: Path, python: str) -> Path:
    return dest / "lib" / f"python{python}" / "site-packages"


def install(wheel: Path, arch: str, python: str, wheelhouse: Optional[Path], dest: Path) -> None:
    """Unpack gridpilot and its dependencies (wheels only, no index) into the environment's site-packages."""
    links = ["--find-links", str(wheel.parent)] + (["--find-links", str(wheelhouse)] if wheelhouse else [])
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-compile",
         "--no-warn-script-location", "--target", str(site_packages(dest, python)), *links, *pip_target_args(wheel, arch, python),
         str(wheel)],
        check=True, env=_isolated_pip_env())
    # pip's console scripts name the interpreter that ran pip (this machine's, maybe another arch): bin/gridpilot
    # below replaces them.
    shutil.rmtree(site_packages(dest, python) / "bin", ignore_errors=True)


def write_environment(dest: Path, version: str, arch: str, python: str, node_python: str) -> None:
    (dest / "bin").mkdir()
    # What makes it a virtual environment: Python finds pyvenv.cfg next to its executable's directory, takes the
    # standard library from `home`, and site-packages from here (nothing of the node's own site-packages).
    os.symlink(node_python, dest / "bin" / "python3")
    (dest / "pyvenv.cfg").write_text(f"home = {os.path.dirname(node_python)}\n"
                                     f"include-system-site-packages = false\nversion = {python}\n")
    launcher = dest / "bin" / "gridpilot"
    launcher.write_text(LAUNCHER.format(version=version, arch=arch, python=python, nodot=python.replace(".", ""),
                                        node_python=node_python, no_install=NO_INSTALL))
    launcher.chmod(0o755)
    # Which distributions went in (the dist-info directories pip left) and their RECORD's sha256, which covers
    # every file the wheel installed.
    wheels = {}
    for info in sorted(site_packages(dest, python).glob("*.dist-info")):
        record = info / "RECORD"
        wheels[info.name[: -len(".dist-info")]] = sha256(record) if record.exists() else ""
    meta = {"version": version, "arch": arch, "python": python, "node_python": node_python, "launcher": "bin/gridpilot",
            "record_sha256": wheels}
    (dest / "gridpilot-env.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def normalise(top: Path, epoch: int) -> None:
    """Same modes and mtimes whoever builds it, whatever the umask: files 0644 (0755 if executable), dirs 0755."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                os.utime(p, (epoch, epoch), follow_symlinks=False)
                continue
            p.chmod(0o755 if os.access(p, os.X_OK) else 0o644)
            os.utime(p, (epoch, epoch))
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
    top.chmod(0o755)  # mkdtemp made it 0700
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
        os.utime(dirpath, (epoch, epoch))


def listing(top: Path) -> List[str]:
    """The tree as text, one line per entry: path, type, mode, size and sha256 (or a link's target)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(top).as_posix()
            st = p.lstat()
            if p.is_symlink():
                lines.append(f"{rel} link {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{rel} dir {st.st_mode & 0o7777:o}")
            else:
                lines.append(f"{rel} file {st.st_mode & 0o7777:o} {st.st_size} {sha256(p)}")
    return sorted(lines)


def _version_key(v: str) -> Tuple[Tuple[int, object], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+_-]", v))


def point_latest(root: Path) -> Optional[str]:
    """<root>/latest -> the highest version present, replaced atomically (a new link renamed over the old)."""
    versions = [p.name for p in root.iterdir()
                if p.is_dir() and not p.is_symlink() and _VERSION.match(p.name) and p.name != "latest"]
    if not versions:
        return None
    best = max(versions, key=_version_key)
    tmp = root / f".latest.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(best, tmp)
    os.replace(tmp, root / "latest")
    return best


def build_version(root: Path, version: str, wheels: Dict[str, Path], python: str, wheelhouse: Optional[Path],
                  fetch: bool, force: bool, epoch: int, skip_unavailable: bool,
                  node_python: Optional[str] = None) -> int:
    final = root / version
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))  # same file system: the rename is atomic
    try:
        built: List[str] = []
        for arch, wheel in sorted(wheels.items()):
            dest = tmp / arch
            dest.mkdir()
            log(f"{version}/{arch}: {wheel.name} for CPython {python}")
            try:
                if fetch and wheelhouse is not None:
                    fetch_dependencies(wheel, arch, python, wheelhouse)
                install(wheel, arch, python, wheelhouse, dest)
            except subprocess.CalledProcessError:
                if not skip_unavailable:
                    raise
                # PyPI has no riscv64 wheels of orjson or PyYAML: without them in the wheelhouse, the other arches
                # are still worth a tree.
                log(f"SKIP: {arch}: no wheels of its dependencies for CPython {python} (put them in --wheelhouse)")
                shutil.rmtree(dest)
                continue
            write_environment(dest, version, arch, python, node_python or f"/usr/bin/python{python}")
            built.append(arch)
        if not built:
            log("no architecture could be laid out")
            return 1
        normalise(tmp, epoch)
        if final.exists():
            if listing(final) == listing(tmp):
                log(f"{final}: already there, identical; nothing to do")
                return 0
            if not force:
                log(f"{final} exists and differs from what these wheels give; refusing (--force replaces it)")
                return EXIT_EXISTS
            old = root / f".{version}.old.{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
            log(f"{final}: replaced")
        else:
            os.rename(tmp, final)
            log(f"{final}: built ({', '.join(built)})")
        return 0
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=Path, help="the tree's top directory (made if missing)")
    ap.add_argument("--wheels", type=Path, default=Path("dist"), help="where gridpilot's wheels are (default dist/)")
    ap.add_argument("--wheelhouse", type=Path,
                    help="wheels of the dependencies (orjson, PyYAML, urllib3) for each arch and Python")
    ap.add_argument("--fetch", action="store_true",
                    help="download missing dependency wheels into --wheelhouse first (pip download; network)")
    ap.add_argument("--version", help="which gridpilot version (default: the only or highest one in --wheels)")
    ap.add_argument("--arch", action="append", choices=ARCHES,
                    help="only this architecture, which must succeed (repeatable; default: every arch with a wheel, "
                         "skipping one whose dependencies have no wheel)")
    ap.add_argument("--python", default="%d.%d" % sys.version_info[:2],
                    help="the CPython minor the worker nodes run, e.g. 3.9 (default: this interpreter's)")
    ap.add_argument("--node-python", help="the CPython the worker nodes have, an absolute path that bin/python3 "
                    "links to (default /usr/bin/python<--python>)")
    ap.add_argument("--force", action="store_true", help="replace a version directory that differs")
    ap.add_argument("--no-latest", action="store_true", help="leave <root>/latest as it is")
    ap.add_argument("--list", action="store_true", help="print the version directory's listing after building")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"3\.[0-9]{1,2}", a.python):
        ap.error(f"--python {a.python!r}: expected a CPython minor such as 3.11")
    if a.node_python is not None and not (os.path.isabs(a.node_python)
                                          and os.path.basename(a.node_python).startswith("python")):
        ap.error(f"--node-python {a.node_python!r}: expected an absolute path to a python executable")
    found = find_wheels(a.wheels)
    if not found:
        ap.error(f"--wheels {a.wheels}: no gridpilot-*-cp39-abi3-*.whl there (make wheels)")
    version = a.version or max({v for v, _ in found}, key=_version_key)
    if not _VERSION.match(version):
        ap.error(f"--version {version!r}: not a version")
    wheels = {arch: p for (v, arch), p in found.items() if v == version and (not a.arch or arch in a.arch)}
    for arch in a.arch or ():
        if arch not in wheels:
            ap.error(f"--arch {arch}: no gridpilot {version} wheel for it in {a.wheels}")
    if not wheels:
        ap.error(f"no gridpilot {version} wheel in {a.wheels}")
    for arch in ARCHES:
        if arch not in wheels and not a.arch:
            log(f"SKIP: {arch}: no gridpilot {version} wheel in {a.wheels}")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", _DEFAULT_EPOCH))
    try:
        rc = build_version(a.root, version, wheels, a.python, a.wheelhouse, a.fetch, a.force, epoch,
                           skip_unavailable=not a.arch, node_python=a.node_python)
    except subprocess.CalledProcessError as e:
        step = e.cmd[3] if len(e.cmd) > 3 else "?"  # download (the network) or install (the wheels at hand)
        log(f"pip {step} failed ({e.returncode}); a dependency with no wheel for this arch/Python? "
            "(--fetch, --wheelhouse)")
        return 1
    if rc == 0 and not a.no_latest:
        log(f"{a.root}/latest -> {point_latest(a.root)}")
    if rc == 0 and a.list:
        print("\n".join(listing(a.root / version)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
