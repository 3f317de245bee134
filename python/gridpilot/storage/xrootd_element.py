"""`root://` storage elements: XRootD servers, through the Python bindings or, failing those, xrdcp/xrdfs.

Uploads go straight to the final name, created exclusively and with persist-on-successful-close, so a client that
dies mid-way leaves no file behind: the server keeps the unclosed file pending (nobody else can read it) for its
`ofs.persist hold` time, 10 minutes by default, in case the client comes back, then deletes it. After the close the server is asked for the size and its
own adler32 of the file; on a mismatch the file is deleted. md5 is computed here on the way (the catalogue keeps
it) and asked of the server only when requested explicitly.
"""

from __future__ import annotations

from typing import Iterator, Optional

from gridpilot.errors import ChecksumUnavailable, StorageError, TransferError, UnsupportedURL
from gridpilot.storage.base import DirEntry, Progress, StorageElement, StrPath, open_local
from gridpilot.storage.checksum import ALGORITHMS, BackgroundChecksummer, Checksummer, Digest, normalize, read_blocks
from gridpilot.storage.xrootd_common import Backend, apply_client_env, split_url

# Set as early as possible: anything in this process that imports XRootD later must see them at its first import.
apply_client_env()

BACKENDS = ("bindings", "commands")

# Upload read size: the same as the bindings' request size, so one local read feeds one network request.
UPLOAD_BLOCK = 8 << 20


def make_backend(se: str, choice: Optional[str] = None) -> Backend:
    """The back end named `choice`, or (None) the bindings when importable, else the commands."""
    if choice not in (None, *BACKENDS):
        raise StorageError(f"unknown XRootD back end {choice!r} (known: {', '.join(BACKENDS)})", se=se, op="configure")
    if choice in (None, "bindings"):
        try:
            from gridpilot.storage.xrootd_bindings import BindingsBackend
        except (ImportError, OSError) as e:
            if choice == "bindings":
                raise StorageError(
                    f"XRootD Python bindings cannot be imported ({e}); install gridpilot[xrootd]", se=se, op="configure"
                ) from e
        else:
            return BindingsBackend(se)
    from gridpilot.storage.xrootd_commands import CommandBackend, commands_available

    if not commands_available():
        raise StorageError(
            "neither the XRootD Python bindings (gridpilot[xrootd]) nor the xrdcp/xrdfs commands are available",
            se=se,
            op="configure",
        )
    return CommandBackend(se)


class XRootDStorageElement(StorageElement):
    """A storage element served by an XRootD server; `url` like root://host:port//path/prefix."""

    kind = "root"
    scheme = "root://"

    def __init__(self, name: str, url: str, backend: Optional[str] = None) -> None:
        super().__init__(name, url)
        try:
            split_url(self.url)
        except ValueError as e:
            raise UnsupportedURL(str(e), se=name, url=url, op="configure") from None
        self._backend = make_backend(name, backend)

    @property
    def backend(self) -> str:
        """Which back end this element uses: "bindings" or "commands"."""
        return self._backend.name

    def _split(self, pfn: str, op: str) -> tuple[str, str]:
        self.check_url(pfn, op)
        try:
            return split_url(pfn)
        except ValueError as e:
            raise UnsupportedURL(str(e), se=self.name, url=pfn, op=op) from None

    def put(self, local: StrPath, pfn: str, *, progress: Optional[Progress] = None) -> Digest:
        self._split(pfn, "put")
        with BackgroundChecksummer(md5=True) as summer:

            def blocks(src: Iterator[bytes]) -> Iterator[bytes]:
                try:
                    for block in src:
                        summer.update(block)
                        yield block
                        if progress is not None:
                            progress(summer.size)
                except OSError as e:
                    raise TransferError(
                        f"reading the local file failed: {e}", se=self.name, url=str(local), op="put"
                    ) from e

            with open_local(local, self.name, "put") as f:
                self._backend.write(pfn, blocks(read_blocks(f, UPLOAD_BLOCK)))
            sent = summer.digest()
        found = self.verify(pfn, sent)
        return Digest(size=found.size, adler32=found.adler32, md5=sent.md5)

    def _read_blocks(self, pfn: str) -> Iterator[bytes]:
        return self._backend.read_blocks(pfn)

    def stat(self, pfn: str) -> int:
        endpoint, path = self._split(pfn, "stat")
        return self._backend.stat(endpoint, path, pfn).size

    def checksum(self, pfn: str, algo: str = "adler32") -> str:
        endpoint, path = self._split(pfn, "checksum")
        if algo not in ALGORITHMS:
            raise ChecksumUnavailable(f"unknown checksum type {algo!r}", se=self.name, url=pfn, op="checksum")
        try:
            answered, value = self._backend.checksum(endpoint, path, pfn, algo)
            if answered == algo:
                return normalize(algo, value)
        except ChecksumUnavailable:
            pass
        # A server not configured for this type answers with its default type (xrootd.chksum) or refuses: read the
        # file through the server and compute it here.
        summer = Checksummer(md5=algo == "md5")
        for block in self._read_blocks(pfn):
            summer.update(block)
        computed = summer.digest().get(algo)
        assert computed is not None
        return computed

    def delete(self, pfn: str) -> None:
        endpoint, path = self._split(pfn, "delete")
        self._backend.rm(endpoint, path, pfn)

    def list(self, pfn: str) -> list[DirEntry]:
        endpoint, path = self._split(pfn, "list")
        base = pfn.rstrip("/")
        entries = [
            DirEntry(name, f"{base}/{name}", st.size, st.is_dir) for name, st in self._backend.ls(endpoint, path, pfn)
        ]
        return sorted(entries, key=lambda d: d.name)
