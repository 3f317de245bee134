"""adler32 and md5 of a stream, computed while the bytes pass through on their way somewhere else: one pass, no re-read.

adler32 is what XRootD servers compute and store (`xrootd.chksum adler32`), md5 what the ALICE catalogue keeps. Both
are written as lowercase hex; adler32 always as 8 digits, because some tools print it without leading zeros and a
string comparison would then see a mismatch that is not there.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional, Union

# 1 MiB: large enough that the per-block Python overhead vanishes next to hashing, small enough to stay in cache.
BLOCK_SIZE = 1 << 20

ALGORITHMS = ("adler32", "md5")


def normalize(algo: str, value: str) -> str:
    """A checksum as this module writes it: lowercase hex, adler32 zero-padded to 8 digits."""
    value = value.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    if algo == "adler32":
        return value.zfill(8)
    return value


@dataclass(frozen=True)
class Digest:
    """Size and checksums of one file's content. A checksum that was not computed or is not known is None."""

    size: int
    adler32: Optional[str] = None
    md5: Optional[str] = None

    def get(self, algo: str) -> Optional[str]:
        if algo == "adler32":
            return self.adler32
        if algo == "md5":
            return self.md5
        raise ValueError(f"unknown checksum type {algo!r} (known: {', '.join(ALGORITHMS)})")

    def mismatches(self, expected: Digest) -> list[str]:
        """What differs from `expected`, one phrase per field; a checksum unknown on either side is not compared."""
        out = []
        if self.size != expected.size:
            out.append(f"size {self.size} != expected {expected.size}")
        for algo in ALGORITHMS:
            mine, theirs = self.get(algo), expected.get(algo)
            if mine is not None and theirs is not None and normalize(algo, mine) != normalize(algo, theirs):
                out.append(f"{algo} {mine} != expected {theirs}")
        return out

    def __str__(self) -> str:
        parts = [f"size {self.size}"]
        parts += [f"{algo} {self.get(algo)}" for algo in ALGORITHMS if self.get(algo) is not None]
        return ", ".join(parts)


class Checksummer:
    """Running size, adler32 and (optionally) md5 of the bytes given to update(), in order."""

    def __init__(self, md5: bool = True) -> None:
        self._size = 0
        self._adler = zlib.adler32(b"")
        self._md5 = hashlib.md5() if md5 else None

    def update(self, data: Union[bytes, bytearray, memoryview]) -> None:
        # zlib and hashlib release the GIL on large buffers, so XRootD's I/O threads keep moving data meanwhile.
        self._size += len(data)
        self._adler = zlib.adler32(data, self._adler)
        if self._md5 is not None:
            self._md5.update(data)

    @property
    def size(self) -> int:
        return self._size

    def digest(self) -> Digest:
        return Digest(
            size=self._size,
            adler32=f"{self._adler & 0xFFFFFFFF:08x}",
            md5=self._md5.hexdigest() if self._md5 is not None else None,
        )


class _HashThread:
    """One running hash fed through a bounded queue, in its own thread; blocks are hashed in the order given."""

    # Blocks waiting: bounds the memory held (8 x 8 MiB) when hashing falls behind the I/O.
    QUEUE_DEPTH = 8

    def __init__(self, name: str, update: Callable[[bytes], None]) -> None:
        self._update = update
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(maxsize=self.QUEUE_DEPTH)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=f"gridpilot-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is None:
                return
            if self.error is None:
                try:
                    self._update(block)
                except BaseException as e:  # noqa: BLE001 - handed to the caller by BackgroundChecksummer.digest()
                    self.error = e

    def put(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self) -> None:
        if self.thread.is_alive():
            self._queue.put(None)
            self.thread.join()


class BackgroundChecksummer:
    """Checksummer for transfers: adler32 and md5 each computed in a thread of its own, while the caller moves data.

    md5 runs at about 0.5 GB/s per core, slower than loopback or a good network: done in line, it sets the pace of a
    transfer. In threads (hashlib and zlib release the GIL on large buffers) the two hashes overlap each other and
    the I/O, so a transfer takes about as long as md5 alone. Pass bytes (immutable: they are hashed later). Use as a
    context manager, or call close(), so the threads end even when the transfer fails.
    """

    def __init__(self, md5: bool = True) -> None:
        self._size = 0
        self._adler = zlib.adler32(b"")
        self._md5 = hashlib.md5() if md5 else None
        self._threads = [_HashThread("adler32", self._update_adler)]
        if self._md5 is not None:
            self._threads.append(_HashThread("md5", self._md5.update))

    def _update_adler(self, block: bytes) -> None:
        self._adler = zlib.adler32(block, self._adler)

    def update(self, data: bytes) -> None:
        self._size += len(data)
        for t in self._threads:
            t.put(data)

    @property
    def size(self) -> int:
        """Bytes given so far (not necessarily hashed yet)."""
        return self._size

    def close(self) -> None:
        """Stop the threads once every block given so far is hashed."""
        for t in self._threads:
            t.close()

    def digest(self) -> Digest:
        self.close()
        for t in self._threads:
            if t.error is not None:
                raise t.error
        return Digest(
            size=self._size,
            adler32=f"{self._adler & 0xFFFFFFFF:08x}",
            md5=self._md5.hexdigest() if self._md5 is not None else None,
        )

    def __enter__(self) -> BackgroundChecksummer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_blocks(stream: BinaryIO, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """The stream's content in blocks of `block_size` bytes (the last may be shorter), until EOF."""
    while True:
        block = stream.read(block_size)
        if not block:
            return
        yield block


def digest_file(path: Union[str, os.PathLike[str]], md5: bool = True, block_size: int = BLOCK_SIZE) -> Digest:
    """Size and checksums of a local file, read once in `block_size` blocks."""
    summer = Checksummer(md5=md5)
    with open(path, "rb") as f:
        for block in read_blocks(f, block_size):
            summer.update(block)
    return summer.digest()
