"""What the JobAgent reads for `gridpilot spy` (pilot/spyanswer.py): the end of a file, bounded in bytes and lines,
whole lines for --follow, and nothing but a regular file of the work directory, whatever the payload put there."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gridpilot.pilot.spyanswer import MAX_BYTES, Refused, answer_for, list_workdir, read_tail


def lines_file(workdir: Path, n: int, name: str = "stdout", last_newline: bool = True) -> bytes:
    data = "".join(f"line {i}\n" for i in range(n)).encode()
    if not last_newline:
        data = data[:-1]
    (workdir / name).write_bytes(data)
    return data


def test_the_last_lines(tmp_path):
    data = lines_file(tmp_path, 100)
    got = read_tail(tmp_path, "stdout", lines=3)
    assert got["text"] == "line 97\nline 98\nline 99\n"
    assert (got["end"], got["size"]) == (len(data), len(data))
    assert data[got["start"]:got["end"]].decode() == got["text"]
    # Fewer lines than asked: all of them; a last line without its newline counts as one.
    assert read_tail(tmp_path, "stdout", lines=1000)["text"] == data.decode()
    lines_file(tmp_path, 5, last_newline=False)
    assert read_tail(tmp_path, "stdout", lines=2)["text"] == "line 3\nline 4"
    (tmp_path / "stdout").write_bytes(b"")
    assert read_tail(tmp_path, "stdout", lines=5) == {"text": "", "start": 0, "end": 0, "size": 0}


def test_a_huge_file_is_read_only_at_its_end_and_from_a_line_start(tmp_path):
    path = tmp_path / "stdout"
    with open(path, "wb") as f:
        f.truncate(1 << 36)  # a 64 GiB sparse file: reading it whole would never end
        f.seek(0, 2)
        f.write(b"partial line\n" + b"x" * 100 + b"\nlast\n")
    t0 = time.monotonic()
    got = read_tail(path.parent, "stdout", lines=10_000)
    assert time.monotonic() - t0 < 2
    assert got["end"] == got["size"] == path.stat().st_size
    assert got["end"] - got["start"] <= MAX_BYTES
    # The window began inside a line (of NULs here): that part is left out.
    assert got["text"] == "x" * 100 + "\nlast\n"


def test_follow_gets_only_new_whole_lines(tmp_path):
    path = tmp_path / "stdout"
    path.write_bytes(b"a\nb\npart")
    first = read_tail(tmp_path, "stdout", lines=10, offset=0)
    assert first["text"] == "a\nb\n" and first["end"] == 4
    # follow's first request: the last whole lines, as many as asked.
    assert read_tail(tmp_path, "stdout", lines=1, offset=0) == {"text": "b\n", "start": 2, "end": 4, "size": 8}
    # Nothing whole after it yet: nothing, and the same place next time.
    assert read_tail(tmp_path, "stdout", lines=10, offset=4) == {"text": "", "start": 4, "end": 4, "size": 8}
    with open(path, "ab") as f:
        f.write(b"ial\nc\n")
    again = read_tail(tmp_path, "stdout", lines=10, offset=4)
    assert again["text"] == "partial\nc\n" and again["end"] == path.stat().st_size
    # A file that shrank (truncated, replaced) is read from its end again.
    path.write_bytes(b"new\n")
    assert read_tail(tmp_path, "stdout", lines=10, offset=again["end"])["text"] == "new\n"
    # A line longer than the bound comes in pieces rather than never.
    path.write_bytes(b"y" * (MAX_BYTES * 2))
    got = read_tail(tmp_path, "stdout", lines=10, offset=0)
    assert len(got["text"]) == MAX_BYTES
    # Fallen behind by more than one answer: the newest whole lines, from a line's start.
    path.write_bytes(b"z" * MAX_BYTES + b"\nnewest\n")
    assert read_tail(tmp_path, "stdout", lines=10, offset=3)["text"] == "newest\n"


def test_nul_and_bad_utf8_become_replacement_characters(tmp_path):
    (tmp_path / "stdout").write_bytes(b"a\0b \xff\xfe ok\n")
    assert read_tail(tmp_path, "stdout", lines=5)["text"] == "a\ufffdb \ufffd\ufffd ok\n"


def test_a_symlink_a_fifo_a_device_a_hard_link_or_a_directory_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "stdout").symlink_to(secret)
    os.mkfifo(work / "stderr")
    with pytest.raises(Refused, match="stdout is a symbolic link: not followed"):
        read_tail(work, "stdout", lines=5)
    t0 = time.monotonic()
    with pytest.raises(Refused, match="stderr is a FIFO, not a regular file"):
        read_tail(work, "stderr", lines=5)  # no writer: a blocking open would wait for ever
    assert time.monotonic() - t0 < 2
    (work / "stderr").unlink()
    os.link(secret, work / "stderr")
    with pytest.raises(Refused, match="stderr has 2 hard links"):
        read_tail(work, "stderr", lines=5)
    (work / "stderr").unlink()
    (work / "stderr").mkdir()
    with pytest.raises(Refused, match="stderr is a directory"):
        read_tail(work, "stderr", lines=5)
    (work / "stderr").rmdir()
    with pytest.raises(Refused, match="no stderr file"):
        read_tail(work, "stderr", lines=5)
    # The work directory itself replaced by a link: not followed either.
    os.rename(work, tmp_path / "moved")
    work.symlink_to(tmp_path)
    with pytest.raises(Refused, match="not a directory"):
        read_tail(work, "stdout", lines=5)
    # As the answer central gets.
    assert answer_for(tmp_path / "moved", {"what": "stdout", "lines": 5}) == {
        "refused": "stdout is a symbolic link: not followed"}
    assert "refused" in answer_for(tmp_path, {"what": "../etc"})


def test_the_listing_names_links_as_links_and_is_bounded(tmp_path):
    (tmp_path / "stdout").write_bytes(b"12345")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / b"bad\xffname".decode("utf-8", "surrogateescape")).write_bytes(b"")
    got = list_workdir(tmp_path)
    kinds = {e["name"]: (e["type"], e["size"]) for e in got["entries"]}
    assert kinds["stdout"] == ("file", 5) and kinds["tmp"][0] == "dir" and kinds["fifo"][0] == "other"
    assert kinds["link"] == ("link", len("/etc/passwd"))
    assert "bad\ufffdname" in kinds and got["more"] is False
    assert [e["name"] for e in got["entries"]] == sorted(kinds)
    for i in range(20):
        (tmp_path / f"f{i:02}").write_bytes(b"")
    few = list_workdir(tmp_path, max_entries=10)
    assert len(few["entries"]) == 10 and few["more"] is True


def test_an_unreachable_central_costs_the_loop_one_try_per_turn(tmp_path):
    """Nothing listens on the port: the first answer fails, the others of that turn are not tried (the next poll
    that gets through hands them out again), and after MAX_TRIES a request is given up."""
    import socket

    from gridpilot.client import CentralClient
    from gridpilot.pilot import spyanswer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused at once
        made = []

        def factory():
            made.append(CentralClient(f"http://127.0.0.1:{port}", "token", retries=0, timeout=2))
            return made[-1]

        answers = spyanswer.SpyAnswers(factory, 7, 0, tmp_path)
        commands = [{"job_id": 7, "command": "spy", "request": r, "what": "workdir"} for r in (1, 2)]
        answers.handle(commands)
        assert answers._tries == {1: 1}
        for _ in range(spyanswer.MAX_TRIES):
            answers.handle(commands)
        assert 1 in answers._done and len(made) == 1
        answers.close()
