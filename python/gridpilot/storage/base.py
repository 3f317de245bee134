"""The storage element interface: one named place that holds files under a URL prefix, reached by one protocol.

Contract every implementation keeps:
- put() copies a local file to a physical URL (PFN) under the element's prefix and returns only after the element
  itself has reported the same size and checksum as the bytes sent; a copy that fails that check is removed and
  VerificationError raised. Existing files are never overwritten (FileAlreadyExists).
- get() streams a PFN into a local file that appears under its final name only when complete, synced and, when an
  expected Digest is given, equal to it in size and checksums.
- Checksums of the bytes sent or received are computed while they pass, never by re-reading the local file.
- Every error is a StorageError naming the element, the operation and the URL.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, ClassVar, Iterator, Optional, Union

from gridpilot.errors import NoSuchFile, StorageError, TransferError, UnsupportedURL, VerificationError
from gridpilot.storage.atomic import AtomicFile
from gridpilot.storage.checksum import Checksummer, Digest

StrPath = Union[str, "os.PathLike[str]"]

# Called with the number of bytes moved so far, after each block: lets the pilot report progress or give up early.
Progress = Callable[[int], None]


def open_local(local: StrPath, se: str, op: str) -> BinaryIO:
    """Open the local side of an upload, with an error that says it is the local file, not the element, at fault."""
    try:
        return open(local, "rb")
    except FileNotFoundError as e:
        raise NoSuchFile("local file not found", se=se, url=os.fspath(local), op=op) from e
    except OSError as e:
        raise TransferError(f"cannot open local file: {e.strerror or e}", se=se, url=os.fspath(local), op=op) from e


@dataclass(frozen=True)
class DirEntry:
    """One entry of a storage element directory listing."""

    name: str
    url: str
    size: int
    is_dir: bool


class StorageElement(ABC):
    """A storage element: `name` like ALICE::CERN::EOS, `url` the prefix every PFN on it starts with, `kind` the
    protocol ("file" or "root")."""

    kind: ClassVar[str]
    scheme: ClassVar[str]

    def __init__(self, name: str, url: str) -> None:
        if not name or any(c.isspace() for c in name):
            raise StorageError(
                f"storage element name {name!r} is empty or contains white space", url=url, op="configure"
            )
        if not url.startswith(self.scheme):
            raise UnsupportedURL(
                f"a {self.kind} storage element needs a {self.scheme} URL", se=name, url=url, op="configure"
            )
        self.name = name
        # One canonical form for prefix tests: no trailing slash (but keep "file:///" itself usable).
        stripped = url.rstrip("/")
        self.url = stripped if len(stripped) > len(self.scheme) else url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.url!r})"

    # ---- URLs ----------------------------------------------------------------------------------------------------

    def url_for(self, relpath: str) -> str:
        """The PFN of `relpath` below this element's prefix."""
        rel = relpath.lstrip("/")
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise UnsupportedURL(f"bad relative path {relpath!r}", se=self.name, url=self.url, op="url_for")
        return f"{self.url}/{rel}"

    def owns(self, pfn: str) -> bool:
        """Whether `pfn` lies under this element's prefix."""
        return pfn == self.url or pfn.startswith(self.url.rstrip("/") + "/")

    def check_url(self, pfn: str, op: str) -> None:
        """Refuse a PFN of another scheme or outside this element's prefix, before any I/O."""
        if not pfn.startswith(self.scheme):
            scheme = pfn.split("://", 1)[0] + "://" if "://" in pfn else "no scheme"
            raise UnsupportedURL(f"{scheme} URL given to a {self.scheme} storage element", se=self.name, url=pfn, op=op)
        if not self.owns(pfn):
            raise UnsupportedURL(f"not under this storage element's prefix {self.url}", se=self.name, url=pfn, op=op)

    # ---- operations each kind implements -------------------------------------------------------------------------

    @abstractmethod
    def put(self, local: StrPath, pfn: str, *, progress: Optional[Progress] = None) -> Digest:
        """Copy local file `local` to `pfn` and verify it on the element; returns the verified size and checksums."""

    @abstractmethod
    def _read_blocks(self, pfn: str) -> Iterator[bytes]:
        """The content of `pfn`, in order, in blocks; raises StorageError (NoSuchFile, TransferError)."""

    @abstractmethod
    def stat(self, pfn: str) -> int:
        """Size in bytes of `pfn`, as the element reports it."""

    @abstractmethod
    def checksum(self, pfn: str, algo: str = "adler32") -> str:
        """Checksum of `pfn` ("adler32" or "md5", lowercase hex), as the element reports or computes it."""

    @abstractmethod
    def delete(self, pfn: str) -> None:
        """Remove `pfn`; NoSuchFile if it is not there."""

    @abstractmethod
    def list(self, pfn: str) -> list[DirEntry]:
        """Entries of the directory `pfn`, sorted by name."""

    # ---- built on the above --------------------------------------------------------------------------------------

    def get(
        self,
        pfn: str,
        local: StrPath,
        *,
        expected: Optional[Digest] = None,
        progress: Optional[Progress] = None,
        overwrite: bool = False,
        durable: bool = False,
    ) -> Digest:
        """Download `pfn` to `local`, checksumming on the way; with `expected`, a mismatch raises VerificationError
        and leaves nothing at `local` (the replica on the element is not touched: it is not ours to delete).

        adler32 is always computed; md5 only when `expected` has an md5 and no adler32: adler32 is what storage
        systems verify transfers with, and md5 would cost more CPU than the transfer itself (~0.5 GB/s per core).
        `durable` fsyncs the file before it gets its name; a work directory does not need it.
        """
        self.check_url(pfn, "get")
        need_md5 = expected is not None and expected.md5 is not None and expected.adler32 is None
        summer = Checksummer(md5=need_md5)
        with AtomicFile(local, overwrite=overwrite, op="get", durable=durable) as out:
            for block in self._read_blocks(pfn):
                summer.update(block)
                out.write(block)
                if progress is not None:
                    progress(summer.size)
            digest = summer.digest()
            if expected is not None:
                bad = digest.mismatches(expected)
                if bad:
                    raise VerificationError(
                        f"downloaded copy differs: {'; '.join(bad)}", se=self.name, url=pfn, op="get"
                    )
            out.commit()
        return digest

    def verify(self, pfn: str, expected: Digest, *, remove: bool = True) -> Digest:
        """Ask the element itself for the size and adler32 of `pfn` and compare them with `expected`.

        On a mismatch the copy is deleted (unless remove=False) and VerificationError raised; its `removed` says
        whether the deletion worked. Returns what the element reported.
        """
        found = Digest(size=self.stat(pfn), adler32=self.checksum(pfn, "adler32"))
        bad = found.mismatches(expected)
        if not bad:
            return found
        removed = False
        if remove:
            try:
                self.delete(pfn)
                removed = True
            except NoSuchFile:
                removed = True
            except StorageError:
                pass
        note = "bad copy removed" if removed else "bad copy NOT removed"
        raise VerificationError(f"{'; '.join(bad)} ({note})", se=self.name, url=pfn, op="verify", removed=removed)
