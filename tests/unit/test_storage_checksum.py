"""Streaming checksums and never-half-written local files."""

from __future__ import annotations

import hashlib
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.errors import FileAlreadyExists, TransferError
from gridpilot.storage.atomic import AtomicFile
from gridpilot.storage.checksum import BLOCK_SIZE, BackgroundChecksummer, Checksummer, Digest, digest_file, normalize


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_streamed_checksums_equal_one_shot_ones_whatever_the_blocks(data: bytes, cuts: list[int]) -> None:
    summer = Checksummer()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in zip(bounds, bounds[1:]):
        summer.update(data[a:b])
    d = summer.digest()
    assert d == Digest(len(data), f"{zlib.adler32(data):08x}", hashlib.md5(data).hexdigest())


def test_digest_file_across_block_boundaries(tmp_path):
    data = os.urandom(2 * BLOCK_SIZE + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert digest_file(path) == Digest(len(data), f"{zlib.adler32(data):08x}", hashlib.md5(data).hexdigest())
    assert digest_file(path, md5=False).md5 is None


def test_empty_input_has_the_well_known_checksums():
    d = Checksummer().digest()
    assert d == Digest(0, "00000001", "d41d8cd98f00b204e9800998ecf8427e")


def test_adler32_is_compared_zero_padded_and_case_blind():
    assert normalize("adler32", "ABC12") == "000abc12"
    assert Digest(5, "000abc12").mismatches(Digest(5, "ABC12")) == []
    assert Digest(5, "000abc12", "aa").mismatches(Digest(6, "000abc13", "AA")) == [
        "size 5 != expected 6",
        "adler32 000abc12 != expected 000abc13",
    ]
    # A checksum unknown on one side is not a mismatch.
    assert Digest(5, None, "aa").mismatches(Digest(5, "1", None)) == []


def test_atomic_file_appears_only_on_commit(tmp_path):
    final = tmp_path / "out.bin"
    with AtomicFile(final) as out:
        out.write(b"hello")
        assert not final.exists()
        out.commit()
    assert final.read_bytes() == b"hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with AtomicFile(final) as out:
            out.write(b"half")
            raise RuntimeError("transfer broke")
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_never_replaces_an_existing_file(tmp_path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"theirs")
    with pytest.raises(FileAlreadyExists):
        AtomicFile(final)
    # Taken between open and commit: still refused, atomically, and the temporary goes.
    other = tmp_path / "late.bin"
    with AtomicFile(other) as out:
        out.write(b"mine")
        other.write_bytes(b"theirs")
        with pytest.raises(FileAlreadyExists):
            out.commit()
    assert other.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.bin", "out.bin"]


def test_atomic_file_in_a_missing_directory_says_where(tmp_path):
    with pytest.raises(TransferError, match="temporary file"):
        AtomicFile(tmp_path / "nope" / "f")


def test_background_checksummer_hashes_in_order_and_stops_its_threads():
    blocks = [os.urandom(n) for n in (1, 70_000, 3, 1 << 20, 0, 12)]
    with BackgroundChecksummer() as summer:
        for b in blocks:
            summer.update(b)
        d = summer.digest()
    data = b"".join(blocks)
    assert d == Digest(len(data), f"{zlib.adler32(data):08x}", hashlib.md5(data).hexdigest())
    assert not any(t.thread.is_alive() for t in summer._threads)
    # Leaving early (a failed transfer) also ends the thread.
    with pytest.raises(RuntimeError):
        with BackgroundChecksummer() as other:
            other.update(b"x" * 1000)
            raise RuntimeError("transfer broke")
    assert not any(t.thread.is_alive() for t in other._threads)
