"""Which installation a CE's pilots run (ce/installs.py, the CE's install_path / install_paths / pilot_tree and
pilot_version settings) and the per-arch shapes of a mixed site (arch, Slurm constraint and partition): resolution on
trees laid out in tmp_path as tools/cvmfs_tree.py lays them out, bad configuration named with its field and line, and
what sbatch is given. The real pilots of a real tree: tests/integration/test_ce_versions.py."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from gridpilot.ce import installs
from gridpilot.ce.backend import PilotSubmission, Resources
from gridpilot.ce.installs import Installations, MissingInstall
from gridpilot.ce.planning import exclusive_waiting
from gridpilot.ce.settings import load_settings
from gridpilot.ce.slurm import sbatch_command
from gridpilot.errors import ConfigError

HERE = platform.machine()
OTHER = "x86_64" if HERE == "aarch64" else "aarch64"


def lay_out(root: Path, version: str, *arches: str) -> None:
    """<root>/<version>/<arch>/bin/gridpilot for each arch, as the tool makes it (an executable launcher)."""
    for arch in arches:
        launcher = root / version / arch / "bin" / "gridpilot"
        launcher.parent.mkdir(parents=True)
        launcher.write_text("#!/bin/sh\n")
        launcher.chmod(0o755)


def link_latest(root: Path, version: str) -> None:
    os.symlink(version, root / "latest")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cvmfs"
    lay_out(root, "0.9.0", "x86_64", "aarch64")
    lay_out(root, "0.10.0", "x86_64")  # newer, but no aarch64 wheel
    link_latest(root, "0.9.0")  # the publisher has not moved latest yet
    return root


def test_a_pinned_version_resolves_per_arch(tree):
    found = Installations(install_path="/unused", pilot_tree=str(tree), pilot_version="0.10.0")
    got = found.resolve("x86_64")
    assert (got.path, got.version, got.arch) == (str(tree / "0.10.0" / "x86_64"), "0.10.0", "x86_64")
    assert found.versions() == ["0.9.0", "0.10.0"], "numbers ordered as numbers"
    assert found.versions("aarch64") == ["0.9.0"]


def test_a_pinned_version_without_the_shapes_arch_is_missing_not_replaced(tree):
    found = Installations(install_path="/unused", pilot_tree=str(tree), pilot_version="0.10.0")
    with pytest.raises(MissingInstall) as e:
        found.resolve("aarch64")
    assert e.value.field == "arch"
    assert "no aarch64 installation" in str(e.value) and "offered for aarch64: 0.9.0" in str(e.value)
    assert "no pilot of another version is submitted instead" in str(e.value)


def test_a_pinned_version_the_tree_lacks_is_missing(tree):
    found = Installations(install_path="/unused", pilot_tree=str(tree), pilot_version="1.0.0")
    with pytest.raises(MissingInstall) as e:
        found.resolve("x86_64")
    assert e.value.field == "pilot_version"
    assert f"pilot_tree {tree} has no version 1.0.0 (offered: 0.9.0, 0.10.0)" in str(e.value)


def test_latest_is_the_trees_link_and_follows_it_without_a_restart(tree):
    found = Installations(install_path="/unused", pilot_tree=str(tree))
    assert found.resolve("aarch64").version == "0.9.0"
    assert found.resolve("x86_64").path == str(tree / "0.9.0" / "x86_64"), "the resolved path, not latest/"
    os.replace(_relink(tree, "0.10.0"), tree / "latest")  # published: the next resolution takes it
    assert found.resolve("x86_64").version == "0.10.0"
    with pytest.raises(MissingInstall, match="no aarch64 installation"):
        found.resolve("aarch64")


def _relink(root: Path, version: str) -> Path:
    tmp = root / ".latest.new"
    os.symlink(version, tmp)
    return tmp


def test_latest_without_a_link_is_the_highest_version(tree):
    (tree / "latest").unlink()
    assert Installations(install_path="/x", pilot_tree=str(tree)).resolve("x86_64").version == "0.10.0"


def test_a_latest_link_out_of_the_tree_is_not_a_version(tree, tmp_path):
    (tree / "latest").unlink()
    os.symlink(str(tmp_path), tree / "latest")
    with pytest.raises(MissingInstall, match="offers no version"):
        Installations(install_path="/x", pilot_tree=str(tree)).resolve("x86_64")


def test_install_paths_by_version_with_the_arch_in_the_path(tmp_path):
    lay_out(tmp_path / "a", "1.0.0", "x86_64", "aarch64")
    lay_out(tmp_path / "b", "2.0.0", "x86_64")
    paths = {"1.0.0": str(tmp_path / "a" / "1.0.0" / "{arch}"), "2.0.0": str(tmp_path / "b" / "2.0.0" / "{arch}")}
    found = Installations(install_path="/x", install_paths=paths)
    assert found.resolve("x86_64").path == str(tmp_path / "b" / "2.0.0" / "x86_64"), "latest: the highest"
    pinned = Installations(install_path="/x", install_paths=paths, pilot_version="1.0.0")
    assert pinned.resolve("aarch64").path == str(tmp_path / "a" / "1.0.0" / "aarch64")
    with pytest.raises(MissingInstall, match=r"install_paths\[2.0.0\] .*: no aarch64 installation"):
        found.resolve("aarch64")


def test_a_plain_install_path_is_not_checked_here_and_takes_the_arch():
    # The nodes may mount what the CE does not: as before issue 20, the CE hands the path on.
    found = Installations(install_path="/cvmfs/gp/latest/{arch}")
    got = found.resolve("aarch64")
    assert (got.path, got.version) == ("/cvmfs/gp/latest/aarch64", None)
    assert found.resolve(None).path == f"/cvmfs/gp/latest/{HERE}", "a shape without arch: the CE's own"


# -- configuration ----------------------------------------------------------------------------------------------

def load(tmp_path: Path, text: str):
    p = tmp_path / "ce.yaml"
    p.write_text(text)
    return load_settings(p)


@pytest.mark.parametrize("text, words", [
    ("pilot_version: 1..x/\n", "ce.yaml:1: field 'pilot_version' must be 'latest' or a version such as 1.2.3"),
    ("pilot_version: 0.9.0\n", "ce.yaml:1: field 'pilot_version': pinning a version needs install_paths or "
                               "pilot_tree"),
    ("pilot_tree: {tree}\npilot_version: 1.0.0\n", "ce.yaml:2: field 'pilot_version': pilot_version 1.0.0: "
                                                   "pilot_tree {tree} has no version 1.0.0 (offered: 0.9.0, 0.10.0)"),
    ("backend: slurm\npilot_tree: {tree}\npilot_version: 0.10.0\nshapes:\n  - {}\n  - {arch: aarch64}\n",
     "ce.yaml:6: field 'shapes[1].arch': pilot_version 0.10.0: pilot_tree {tree}: no aarch64 installation"),
    ("pilot_tree: {tree}/nowhere\n", "ce.yaml:1: field 'pilot_tree': {tree}/nowhere is not a directory here"),
    ("pilot_tree: cvmfs/gp\n", "ce.yaml:1: field 'pilot_tree': 'cvmfs/gp' is not an absolute path"),
    ("install_path: /opt/gp\npilot_tree: {tree}\n", "ce.yaml:2: field 'pilot_tree': give one of install_path, "
                                                     "install_paths and pilot_tree, not install_path and pilot_tree"),
    ("install_paths:\n  '1.0': /opt/a\n  beta: /opt/b\n", "ce.yaml:3: field 'install_paths': 'beta' is not a version"),
    ("install_paths:\n  '1.0': opt/a\n", "ce.yaml:2: field 'install_paths[1.0]': 'opt/a' is not an absolute path"),
    ("install_paths:\n  '1.0': /nowhere/{arch}\n", "ce.yaml:2: field 'install_paths[1.0]': pilot_version latest: "
                                                     "install_paths[1.0] /nowhere/" + HERE + ": no " + HERE),
    ("shapes:\n  - {arch: sparc}\n", "ce.yaml:2: field 'shapes[0]': arch must be one of x86_64, aarch64, riscv64"),
    ("backend: slurm\nshapes:\n  - {constraint: 'a b'}\n", "ce.yaml:3: field 'shapes[0]': constraint must be a Slurm "
                                                           "feature expression"),
    ("backend: slurm\nshapes:\n  - {partition: 'x;y'}\n", "field 'shapes[0]': partition must be a Slurm partition"),
    ("shapes:\n  - {constraint: aarch64}\n", "ce.yaml:2: field 'shapes[0].constraint': only the slurm backend places "
                                             "pilots by constraint (backend is local)"),
    # A forked pilot offers this machine's CPU: a shape of another arch would ask central for jobs it never runs.
    ("shapes:\n  - {arch: " + OTHER + "}\n", "ce.yaml:2: field 'shapes[0].arch': the local backend forks pilots on "
                                            "this machine (" + HERE + "), not on " + OTHER + " nodes"),
])
def test_bad_installation_settings_are_named(tmp_path, tree, text, words):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text.replace("{tree}", str(tree)))
    assert words.replace("{tree}", str(tree)) in str(e.value)


def test_per_arch_shapes_of_a_pinned_tree_load(tmp_path, tree):
    s = load(tmp_path, f"backend: slurm\npilot_tree: {tree}\npilot_version: 0.9.0\nslurm_partition: grid\nshapes:\n"
                       "  - {arch: x86_64, constraint: x86_64}\n"
                       "  - {arch: aarch64, constraint: 'aarch64&sve', partition: arm}\n")
    x86, arm = sorted(s.resource_shapes(), key=lambda r: r.arch, reverse=True)
    assert (arm.arch, arm.constraint, arm.partition) == ("aarch64", "aarch64&sve", "arm")
    found = s.installations()
    assert found.resolve(arm.arch).path == str(tree / "0.9.0" / "aarch64")
    assert found.resolve(x86.arch).path == str(tree / "0.9.0" / "x86_64")
    assert arm.label() == "1c/2000MB/3600s/aarch64@arm[aarch64&sve]"


# -- what the batch system is given, and what is planned -----------------------------------------------------------

def submission(shape: Resources) -> PilotSubmission:
    return PilotSubmission(script=Path("/p/ce1-1/pilot.sh"), resources=shape, name="ce1-1",
                           output=Path("/p/ce1-1/pilot.out"), workdir=Path("/p/ce1-1"))


def test_sbatch_places_a_per_arch_shape_by_constraint_and_partition():
    arm = submission(Resources(4, 8000, 3600, arch="aarch64", constraint="aarch64&sve", partition="arm"))
    cmd = sbatch_command(arm, "gridpilot.CE1", partition="grid")
    assert "--constraint=aarch64&sve" in cmd and "--partition=arm" in cmd
    assert "--partition=grid" not in cmd, "the shape's partition replaces the CE's"
    plain = sbatch_command(submission(Resources(4, 8000, 3600, arch="x86_64")), "gridpilot.CE1", partition="grid")
    assert "--partition=grid" in plain and not any(a.startswith("--constraint") for a in plain)


def test_shapes_of_two_arches_are_planned_apart():
    # A job that fits the small x86_64 shape does not fit the aarch64 one: each is charged with its own jobs.
    x86 = Resources(1, 2000, 3600, arch="x86_64")
    arm = Resources(8, 16000, 3600, arch="aarch64")
    assert not x86.fits_in(arm) and not arm.fits_in(x86)
    assert exclusive_waiting({x86: 3, arm: 2}) == {x86: 3, arm: 2}
    same = Resources(8, 16000, 3600, arch="x86_64")
    assert exclusive_waiting({x86: 3, same: 5}) == {x86: 3, same: 2}


def test_a_shape_record_keeps_its_placement():
    shape = Resources(2, 4000, 600, arch="aarch64", constraint="arm64", partition="arm")
    assert Resources.from_dict(shape.to_dict()) == shape
    # Records written before issue 20 have no placement: the shape is the CE's arch, unplaced.
    old = {"cores": 2, "memory_mb": 4000, "wall_s": 600, "gpus": 0, "gpu_vendor": "", "gpu_model": ""}
    assert Resources.from_dict(old) == Resources(2, 4000, 600)


def test_latest_is_spelt_once():
    assert installs.LATEST == "latest" and not installs.valid_version("latest")
