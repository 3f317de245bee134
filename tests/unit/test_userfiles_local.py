"""The local side of `gridpilot get|ls|cp` (gridpilot/userfiles.py) that needs no central: archives unpacked only
inside the destination, names placed below it, the `file:` prefix, --files patterns."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from gridpilot.console import Failed, UsageError
from gridpilot.userfiles import check_dest, local_path, relative_name, split_patterns, unpack


def make_zip(path: Path, members: dict, links: dict = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_unpack_places_every_member_below_the_root(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    z = make_zip(tmp_path / "out.zip", {"stdout": b"hello\n", "sub/dir/x.log": b"x" * 5000, "./y": b"y"})
    got = unpack(z, dest, "/u/out.zip")
    assert tree(dest) == {"stdout": b"hello\n", "sub/dir/x.log": b"x" * 5000, "y": b"y"}
    assert [m["status"] for m in got.members] == ["unpacked"] * 3
    # Again: the same content is there already and is kept, not rewritten.
    again = unpack(z, dest, "/u/out.zip")
    assert [m["status"] for m in again.members] == ["present"] * 3
    # Other content under a member's name is never overwritten.
    (dest / "stdout").write_bytes(b"mine\n")
    with pytest.raises(Failed, match="exists with other content"):
        unpack(z, dest, "/u/out.zip")
    assert (dest / "stdout").read_bytes() == b"mine\n"
    assert not [p for p in dest.rglob(".*.part")]


@pytest.mark.parametrize("members,links,why", [
    ({"ok.txt": b"fine", "../escape.txt": b"evil"}, {}, "'..' component"),
    ({"ok.txt": b"fine", "a/../../escape.txt": b"evil"}, {}, "'..' component"),
    ({"ok.txt": b"fine", "/tmp/abs.txt": b"evil"}, {}, "absolute path"),
    ({"ok.txt": b"fine", "C:/win.txt": b"evil"}, {}, "absolute path"),
    ({"ok.txt": b"fine", "a\\..\\b": b"evil"}, {}, "backslash"),
    ({"ok.txt": b"fine"}, {"link": "/etc/passwd"}, "symbolic link"),
    ({"ok.txt": b"fine", "dup": b"1", "./dup": b"2"}, {}, "land on one file"),
])
def test_unpack_refuses_the_whole_archive_for_one_bad_member(tmp_path, members, links, why):
    dest = tmp_path / "dest"
    dest.mkdir()
    z = make_zip(tmp_path / "bad.zip", members, links)
    with pytest.raises(Failed, match=why):
        unpack(z, dest, "/u/bad.zip")
    # Nothing of it was written, not even the good member before the bad one, and nothing outside.
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_refuses_a_member_that_a_link_in_the_destination_leads_out(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    z = make_zip(tmp_path / "a.zip", {"sub/x.txt": b"evil"})
    with pytest.raises(Failed, match="outside"):
        unpack(z, dest, "/u/a.zip")
    assert list(outside.iterdir()) == []


def test_unpack_a_damaged_member_leaves_nothing_under_its_name(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    z = make_zip(tmp_path / "d.zip", {"data": b"abcdefgh" * 1000})
    raw = bytearray(z.read_bytes())
    raw[raw.index(b"abcdefgh") + 100] ^= 0xFF  # writestr stores: the member's own bytes, so its CRC fails
    z.write_bytes(bytes(raw))
    with pytest.raises(Failed):
        unpack(z, dest, "/u/d.zip")
    assert not (dest / "data").exists() and list(dest.iterdir()) == []


def test_not_a_zip(tmp_path):
    f = tmp_path / "x.zip"
    f.write_bytes(b"not a zip")
    with pytest.raises(Failed, match="not a zip"):
        unpack(f, tmp_path, "/u/x.zip")


def test_relative_name_below_the_output_dir():
    assert relative_name("/u/a/job-1/out.txt", "/u/a/job-1") == "out.txt"
    assert relative_name("/u/a/job-1/sub/out.txt", "/u/a/job-1/") == "sub/out.txt"
    assert relative_name("/elsewhere/out.txt", "/u/a/job-1") == "out.txt"
    with pytest.raises(Failed):
        relative_name("/u/a/job-1/../x", "/u/a/job-1")


def test_split_patterns_repeatable_and_comma_separated():
    assert split_patterns(["*.root,stdout", " log* "]) == ["*.root", "stdout", "log*"]
    assert split_patterns(None) == []


def test_local_path_prefix():
    assert local_path("file:out.txt") == "out.txt"
    assert local_path("file:/tmp/x") == "/tmp/x"
    assert local_path("file:///tmp/x") == "/tmp/x"
    assert local_path("/gridpilot/user/a/alice/x") is None
    with pytest.raises(UsageError):
        local_path("file:")


def test_check_dest_refuses_what_cannot_be_written(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory that can be written to"):
        check_dest(f / "sub")
    assert check_dest(tmp_path / "new" / "dir").is_dir()
