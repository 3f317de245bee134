"""The JobWrapper's copy of a payload's stdout/stderr (pilot/capture.py): real pipes, real writer processes."""

from __future__ import annotations

import subprocess

from gridpilot.pilot import capture
from gridpilot.pilot.capture import CappedCopy

MB = 1 << 20


def run_writer(copy: CappedCopy, script: str) -> int:
    """A real process writing to the copy's pipe, as the payload would; its exit status."""
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=copy.write_fd, stdin=subprocess.DEVNULL)
    copy.start()
    rc = proc.wait()
    assert copy.finish(timeout=30)
    return rc


def test_a_flood_keeps_the_first_part_and_counts_the_rest(tmp_path):
    out = tmp_path / "stdout"
    copy = CappedCopy("stdout", out, 2 * MB)
    # 24 MiB: far beyond the pipe's buffer, so the writer only finishes if the copier keeps reading past the cap.
    rc = run_writer(copy, "printf 'first line\\n'; head -c 25165824 /dev/zero | tr '\\0' x")
    assert rc == 0
    data = out.read_bytes()
    assert len(data) == 2 * MB == copy.kept
    assert data.startswith(b"first line\nxxxx")
    assert copy.discarded == 24 * MB + len("first line\n") - 2 * MB
    assert copy.capped and copy.write_error is None


def test_output_under_the_cap_is_kept_whole(tmp_path):
    out = tmp_path / "stdout"
    copy = CappedCopy("stdout", out, 2 * MB)
    assert out.exists(), "the file exists from the start, even if the payload never writes"
    assert run_writer(copy, "seq 1 1000") == 0
    assert out.read_text() == "".join(f"{i}\n" for i in range(1, 1001))
    assert not copy.capped and copy.discarded == 0


def test_no_cap(tmp_path):
    copy = CappedCopy("stderr", tmp_path / "stderr", None)
    assert run_writer(copy, "head -c 5000000 /dev/zero") == 0
    assert copy.kept == 5000000 and not copy.capped


def test_output_exactly_at_the_cap_is_not_reported_capped(tmp_path):
    copy = CappedCopy("stdout", tmp_path / "stdout", MB)
    assert run_writer(copy, f"head -c {MB} /dev/zero") == 0
    assert copy.kept == MB and not copy.capped


def test_finish_reports_a_writer_that_still_holds_the_pipe(tmp_path):
    copy = CappedCopy("stdout", tmp_path / "stdout", MB)
    # The writer's background child keeps stdout open after its parent exits, as a leftover daemon would.
    proc = subprocess.Popen(["/bin/sh", "-c", "echo hi; exec sleep 30"], stdout=copy.write_fd,
                            stdin=subprocess.DEVNULL)
    copy.start()
    try:
        assert not copy.finish(timeout=0.5)
    finally:
        proc.kill()
        proc.wait()
    assert copy.finish(timeout=30)
    assert (tmp_path / "stdout").read_text() == "hi\n"


def test_abandon_closes_everything(tmp_path):
    copy = CappedCopy("stdout", tmp_path / "stdout", MB)
    copy.abandon()
    assert (tmp_path / "stdout").read_bytes() == b""


def test_without_splice_the_copy_goes_through_python(tmp_path, monkeypatch):
    """Python < 3.10 has no os.splice: the same cap, by reading and writing."""
    monkeypatch.setattr(capture, "_splice", None)
    out = tmp_path / "stdout"
    copy = CappedCopy("stdout", out, MB)
    assert run_writer(copy, "printf 'first line\\n'; head -c 3000000 /dev/zero") == 0
    assert out.read_bytes().startswith(b"first line\n\0") and copy.kept == MB
    assert copy.discarded == 3000000 + len("first line\n") - MB
