"""Storage elements against real storage: a directory (file://) and a real XRootD server (root://), the latter
through both client back ends (Python bindings, xrdcp/xrdfs). Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.xrootd_server import XRootDServer, backend_or_skip

from gridpilot.errors import (
    ChecksumUnavailable,
    FileAlreadyExists,
    NoSuchFile,
    StorageError,
    TransferError,
    UnsupportedURL,
    VerificationError,
)
from gridpilot.storage.base import StorageElement
from gridpilot.storage.checksum import Digest, digest_file
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.xrootd_element import XRootDStorageElement

KINDS = ["file", "root-bindings", "root-commands"]


class Where:
    """A fresh storage element for one test, and how to reach its files behind its back."""

    def __init__(self, se: StorageElement, disk_path) -> None:
        self.se = se
        self.disk_path = disk_path


@pytest.fixture(params=KINDS)
def where(request, tmp_path) -> Where:
    name = f"T{uuid.uuid4().hex[:8]}"
    if request.param == "file":
        se = LocalStorageElement(f"TEST::{name}::FILE", f"file://{tmp_path}/se")
        return Where(se, se.path)
    backend = request.param.split("-", 1)[1]
    backend_or_skip(backend)
    server: XRootDServer = request.getfixturevalue("xrootd_server")
    se = XRootDStorageElement(f"TEST::{name}::XRD", server.se_url(name), backend=backend)
    return Where(se, server.disk_path)


def _data(tmp_path: Path, size: int, name: str = "src.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("size", [0, 1, 3 * (1 << 20) + 17, 20 * (1 << 20) + 5])  # also beyond one 8 MiB request
def test_round_trip_with_checksums(where, tmp_path, size):
    se = where.se
    src = _data(tmp_path, size)
    local = digest_file(src)
    pfn = se.url_for(f"dir/{uuid.uuid4()}")
    seen: list[int] = []
    put = se.put(src, pfn, progress=seen.append)
    assert put == local  # size, adler32 confirmed by the element; md5 of what was sent
    assert seen[-1:] == ([size] if size else [])
    assert se.stat(pfn) == size
    assert se.checksum(pfn) == local.adler32
    assert se.checksum(pfn, "md5") == local.md5  # the test server stores adler32 only: computed through it
    dest = tmp_path / "back.bin"
    # adler32 verifies the download; md5 is left out when adler32 is known (it would cost more than the transfer).
    assert se.get(pfn, dest, expected=local) == Digest(size, local.adler32, None)
    assert dest.read_bytes() == src.read_bytes()
    md5_only = tmp_path / "md5.bin"
    assert se.get(pfn, md5_only, expected=Digest(size, md5=local.md5)).md5 == local.md5
    with pytest.raises(VerificationError, match="md5"):
        se.get(pfn, tmp_path / "bad-md5.bin", expected=Digest(size, md5="0" * 32))
    assert not (tmp_path / "bad-md5.bin").exists()
    [entry] = se.list(se.url_for("dir"))
    assert (entry.url, entry.size, entry.is_dir) == (pfn, size, False)
    se.delete(pfn)
    with pytest.raises(NoSuchFile):
        se.stat(pfn)


def test_existing_replica_is_never_overwritten(where, tmp_path):
    se = where.se
    first, second = _data(tmp_path, 1000, "a"), _data(tmp_path, 2000, "b")
    pfn = se.url_for(f"x/{uuid.uuid4()}")
    se.put(first, pfn)
    with pytest.raises(FileAlreadyExists) as e:
        se.put(second, pfn)
    assert e.value.se == se.name and e.value.url == pfn and e.value.op == "put"
    assert se.checksum(pfn) == digest_file(first).adler32


def test_corrupted_replica_is_caught_on_download_and_nothing_is_left(where, tmp_path):
    se = where.se
    src = _data(tmp_path, 300_000)
    expected = digest_file(src)
    pfn = se.url_for(f"c/{uuid.uuid4()}")
    se.put(src, pfn)
    _flip_byte(where.disk_path(pfn), 150_000)  # behind the element's back: same size, other content
    dest = tmp_path / "in" / "file.bin"
    dest.parent.mkdir()
    with pytest.raises(VerificationError, match="adler32") as e:
        se.get(pfn, dest, expected=expected)
    assert e.value.se == se.name and e.value.url == pfn
    assert list(dest.parent.iterdir()) == [], "no half or bad file may be left in the work directory"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: os.truncate(p, 50_000), "size 50000 != expected 100000"),
        (lambda p: _flip_byte(p, 4242), "adler32 .* != expected"),
    ],
    ids=["truncated", "flipped"],
)
def test_verify_asks_the_element_and_removes_a_bad_copy(where, tmp_path, damage, message):
    se = where.se
    src = _data(tmp_path, 100_000)
    good = digest_file(src)
    pfn = se.url_for(f"v/{uuid.uuid4()}")
    se.put(src, pfn)
    assert se.verify(pfn, good).adler32 == good.adler32
    disk = where.disk_path(pfn)
    # Damaged behind the element's back, as a broken disk or an interrupted server-side copy would leave it.
    damage(disk)
    # XRootD keeps the checksum it computed and recomputes it only for a newer mtime: make sure it is newer.
    later = time.time() + 5
    os.utime(disk, (later, later))
    with pytest.raises(VerificationError, match=message) as e:
        se.verify(pfn, good)
    assert e.value.removed
    with pytest.raises(NoSuchFile):
        se.stat(pfn)


def test_missing_files_and_foreign_urls_give_clear_errors(where, tmp_path):
    se = where.se
    missing = se.url_for(f"m/{uuid.uuid4()}")
    for call in (lambda: se.stat(missing), lambda: se.checksum(missing), lambda: se.delete(missing)):
        with pytest.raises(NoSuchFile) as e:
            call()
        assert e.value.se == se.name and e.value.url == missing
    with pytest.raises(NoSuchFile):
        se.get(missing, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(NoSuchFile, match="local file not found") as e:
        se.put(tmp_path / "no-such-local-file", se.url_for("x/y"))
    assert e.value.url == str(tmp_path / "no-such-local-file")
    with pytest.raises(UnsupportedURL, match="s3:// URL given"):
        se.stat("s3://bucket/key")
    with pytest.raises(UnsupportedURL, match="not under"):
        se.stat(se.scheme + "/elsewhere/entirely" if se.kind == "file" else "root://127.0.0.1:1//other/place")
    with pytest.raises(ChecksumUnavailable):
        se.checksum(missing, "sha1")


def test_closed_port_fails_fast_with_the_element_named(tmp_path):
    backend_or_skip(None)
    # Nothing listens on port 1: the client must give up at once, not after minutes of retries.
    se = XRootDStorageElement("TEST::DOWN::XRD", "root://127.0.0.1:1//data/down")
    src = _data(tmp_path, 1000)
    t0 = time.monotonic()
    with pytest.raises(TransferError) as e:
        se.put(src, se.url_for("a/b"))
    assert time.monotonic() - t0 < 20
    assert "TEST::DOWN::XRD put root://127.0.0.1:1//data/down/a/b" in str(e.value)


def test_bad_configuration_is_refused_up_front():
    with pytest.raises(UnsupportedURL, match="needs a root:// URL"):
        XRootDStorageElement("A::B", "file:///x")
    with pytest.raises(UnsupportedURL, match="no host"):
        XRootDStorageElement("A::B", "root:///x")
    with pytest.raises(StorageError, match="white space"):
        LocalStorageElement("A B", "file:///x")
    with pytest.raises(StorageError, match="absolute path"):
        LocalStorageElement("A::B", "file://x")


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRD_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_without_the_bindings_xrdcp_takes_over():
    backend_or_skip("commands")
    # As on a node without the `xrootd` wheel: the import fails, the element still works through the commands.
    code = """
import sys
sys.modules["XRootD"] = None  # makes `import XRootD` raise ImportError
from gridpilot.errors import StorageError
from gridpilot.storage.xrootd_element import XRootDStorageElement
print(XRootDStorageElement("A::B", "root://127.0.0.1:1//x").backend)
try:
    XRootDStorageElement("A::B", "root://127.0.0.1:1//x", backend="bindings")
except StorageError as e:
    print(e)
"""
    backend, error = _python(code).splitlines()
    assert backend == "commands"
    assert "bindings cannot be imported" in error and "gridpilot[xrootd]" in error


def test_client_timeouts_are_set_before_xrootd_is_imported():
    code = """
import os, sys
import gridpilot.storage.xrootd_element
print(os.environ["XRD_CONNECTIONWINDOW"], os.environ["XRD_CONNECTIONRETRY"], os.environ["XRD_REQUESTTIMEOUT"])
print("XRootD" in sys.modules)
"""
    values, imported = _python(code).splitlines()
    assert values == "15 2 600"
    assert imported == "False", "importing the storage layer must not import XRootD before the environment is set"
