"""`file://` storage elements: a directory on a local or shared file system, the embedded default.

A PFN is `file://` followed by an absolute path, taken literally (no percent-decoding). Writes go to a hidden
temporary in the target's directory, are fsync'ed, read back and compared with what was sent, and only then renamed
into place: a crash or a failed check never leaves a complete-looking file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterator, Optional

from gridpilot.errors import ChecksumUnavailable, NoSuchFile, StorageError, TransferError, VerificationError
from gridpilot.storage.atomic import TEMP_SUFFIX, AtomicFile
from gridpilot.storage.base import DirEntry, Progress, StorageElement, StrPath, open_local
from gridpilot.storage.checksum import ALGORITHMS, BackgroundChecksummer, Digest, digest_file, read_blocks


class LocalStorageElement(StorageElement):
    """A storage element that is a directory, reached through the file system."""

    kind = "file"
    scheme = "file://"

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        if not self.url[len(self.scheme) :].startswith("/"):
            raise self._error(StorageError, "a file:// URL needs an absolute path (file:///dir)", self.url, "configure")

    def path(self, pfn: str) -> Path:
        """The local path of a PFN on this element."""
        return Path(pfn[len(self.scheme) :])

    def _error(self, cls: type[StorageError], what: str, pfn: str, op: str) -> StorageError:
        return cls(what, se=self.name, url=pfn, op=op)

    def _os_error(self, e: OSError, pfn: str, op: str) -> StorageError:
        if e.errno == errno.ENOENT:
            return self._error(NoSuchFile, "no such file or directory", pfn, op)
        return self._error(TransferError, f"{e.strerror or e}", pfn, op)

    def put(self, local: StrPath, pfn: str, *, progress: Optional[Progress] = None) -> Digest:
        self.check_url(pfn, "put")
        target = self.path(pfn)
        with open_local(local, self.name, "put") as src:
            with AtomicFile(target, make_parents=True, op="put", se=self.name, url=pfn) as out:
                with BackgroundChecksummer(md5=True) as summer:
                    try:
                        for block in read_blocks(src):
                            summer.update(block)
                            out.write(block)
                            if progress is not None:
                                progress(summer.size)
                    except OSError as e:
                        what = f"reading the local file failed: {e}"
                        raise TransferError(what, se=self.name, url=str(local), op="put") from e
                    sent = summer.digest()
                out.sync()
                # The element's own answer: read back what reached its disk, before the file gets its final name.
                # Size and adler32, as for root:// elements; md5 again would double the cost of the check.
                found = digest_file(out.temp, md5=False)
                bad = found.mismatches(sent)
                if bad:
                    what = f"written copy differs: {'; '.join(bad)} (removed)"
                    raise VerificationError(what, se=self.name, url=pfn, op="put")
                out.commit()
        return Digest(size=found.size, adler32=found.adler32, md5=sent.md5)

    def _read_blocks(self, pfn: str) -> Iterator[bytes]:
        try:
            f = open(self.path(pfn), "rb")
        except OSError as e:
            raise self._os_error(e, pfn, "get") from e
        with f:
            try:
                yield from read_blocks(f)
            except OSError as e:
                raise self._os_error(e, pfn, "get") from e

    def stat(self, pfn: str) -> int:
        self.check_url(pfn, "stat")
        try:
            return os.stat(self.path(pfn)).st_size
        except OSError as e:
            raise self._os_error(e, pfn, "stat") from e

    def checksum(self, pfn: str, algo: str = "adler32") -> str:
        self.check_url(pfn, "checksum")
        if algo not in ALGORITHMS:
            raise self._error(ChecksumUnavailable, f"unknown checksum type {algo!r}", pfn, "checksum")
        try:
            value = digest_file(self.path(pfn), md5=algo == "md5").get(algo)
        except OSError as e:
            raise self._os_error(e, pfn, "checksum") from e
        assert value is not None
        return value

    def delete(self, pfn: str) -> None:
        self.check_url(pfn, "delete")
        try:
            os.unlink(self.path(pfn))
        except OSError as e:
            raise self._os_error(e, pfn, "delete") from e

    def list(self, pfn: str) -> list[DirEntry]:
        self.check_url(pfn, "list")
        base = pfn.rstrip("/")
        entries = []
        try:
            with os.scandir(self.path(pfn)) as it:
                for e in it:
                    if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX):
                        continue  # an upload in progress (AtomicFile's temporary), not a file of this element
                    st = e.stat(follow_symlinks=True)
                    entries.append(DirEntry(e.name, f"{base}/{e.name}", st.st_size, e.is_dir()))
        except OSError as e:
            raise self._os_error(e, pfn, "list") from e
        return sorted(entries, key=lambda d: d.name)
