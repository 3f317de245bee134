"""XRootD through the official Python bindings (PyPI `xrootd`, module `XRootD.client`).

Importing this module imports XRootD, so it sets the client environment defaults first (xrootd_common). Reads and writes
are pipelined: up to WINDOW requests of CHUNK bytes are in flight while the caller checksums the previous block,
which is how xrdcp reaches line speed too (its defaults are 4 chunks of 8 MiB).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Iterator, Optional

from gridpilot.errors import StorageError, TransferError
from gridpilot.storage.xrootd_common import RemoteStat, apply_client_env, error_for, parse_checksum_reply, split_url

apply_client_env()

from XRootD import client  # noqa: E402  (the environment must be set before the first import)
from XRootD.client.flags import DirListFlags, OpenFlags, QueryCode, StatInfoFlags  # noqa: E402

CHUNK = 8 << 20
WINDOW = 4
# Callbacks normally come within XRD_REQUESTTIMEOUT; this is only the backstop against waiting forever.
_WAIT_BACKSTOP_S = 3600.0


class _Request:
    """One asynchronous request: the callback the bindings call from their own thread, and the wait for it.

    It also holds the buffer of a write: the bindings do not keep a reference to it, so a buffer freed before the
    request completes sends garbage (seen here as wrong adler32 on the server with many small writes in flight).
    """

    __slots__ = ("buffer", "size", "_done", "status", "response")

    def __init__(self, buffer: Optional[bytes] = None, size: int = 0) -> None:
        self.buffer = buffer
        self.size = size
        self._done = threading.Event()
        self.status: Any = None
        self.response: Any = None

    def __call__(self, status: Any, response: Any, hostlist: Any = None) -> None:
        self.status = status
        self.response = response
        self._done.set()

    def wait(self) -> tuple[Any, Any]:
        if not self._done.wait(_WAIT_BACKSTOP_S):
            raise TimeoutError(f"no answer from the XRootD client in {_WAIT_BACKSTOP_S:.0f} s")
        return self.status, self.response


class BindingsBackend:
    """The Backend protocol (xrootd_common.Backend) over XRootD.client."""

    name = "bindings"

    def __init__(self, se: str) -> None:
        self._se = se
        self._fs: dict[str, Any] = {}

    def _filesystem(self, endpoint: str) -> Any:
        fs = self._fs.get(endpoint)
        if fs is None:
            fs = self._fs[endpoint] = client.FileSystem(endpoint)
        return fs

    def _check(self, status: Any, url: str, op: str, what: str = "") -> None:
        if not status.ok:
            raise error_for(status.message, status.errno, se=self._se, url=url, op=op, what=what)

    def _submit(
        self, inflight: deque[_Request], url: str, op: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Send one asynchronous request. Once an earlier request failed the bindings close the file and refuse
        new ones with ValueError("I/O operation on closed file"); the reason worth reporting is the earlier one."""
        try:
            return method(*args, **kwargs)
        except ValueError:
            for req in inflight:
                self._check(req.wait()[0], url, op)
            raise TransferError(
                "the XRootD client closed the file after an error", se=self._se, url=url, op=op
            ) from None

    def stat(self, endpoint: str, path: str, url: str) -> RemoteStat:
        status, info = self._filesystem(endpoint).stat(path)
        self._check(status, url, "stat")
        return RemoteStat(size=int(info.size), is_dir=bool(info.flags & StatInfoFlags.IS_DIR))

    def checksum(self, endpoint: str, path: str, url: str, algo: str) -> tuple[str, str]:
        arg = path if algo == "adler32" else f"{path}?cks.type={algo}"
        status, reply = self._filesystem(endpoint).query(QueryCode.CHECKSUM, arg)
        self._check(status, url, "checksum")
        text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)
        try:
            return parse_checksum_reply(text)
        except ValueError as e:
            raise TransferError(str(e), se=self._se, url=url, op="checksum") from None

    def rm(self, endpoint: str, path: str, url: str) -> None:
        status, _ = self._filesystem(endpoint).rm(path)
        self._check(status, url, "delete")

    def ls(self, endpoint: str, path: str, url: str) -> list[tuple[str, RemoteStat]]:
        status, listing = self._filesystem(endpoint).dirlist(path, DirListFlags.STAT)
        self._check(status, url, "list")
        out = []
        for entry in listing:
            info = entry.statinfo
            out.append((entry.name, RemoteStat(size=int(info.size), is_dir=bool(info.flags & StatInfoFlags.IS_DIR))))
        return out

    def read_blocks(self, url: str) -> Iterator[bytes]:
        f = client.File()
        status, _ = f.open(url, OpenFlags.READ)
        self._check(status, url, "get")
        inflight: deque[_Request] = deque()
        try:
            status, info = f.stat()
            self._check(status, url, "get")
            size = int(info.size)
            offset = 0
            while offset < size or inflight:
                while offset < size and len(inflight) < WINDOW:
                    n = min(CHUNK, size - offset)
                    req = _Request(size=n)
                    self._check(self._submit(inflight, url, "get", f.read, offset, n, callback=req), url, "get")
                    inflight.append(req)
                    offset += n
                req = inflight.popleft()
                status, data = req.wait()
                self._check(status, url, "get")
                if len(data) != req.size:
                    raise TransferError(
                        f"short read: {len(data)} of {req.size} bytes (file changed while being read?)",
                        se=self._se,
                        url=url,
                        op="get",
                    )
                yield data
        finally:
            # Requests still in flight write into the File object's state: let them finish before closing it.
            for req in inflight:
                try:
                    req.wait()
                except TimeoutError:
                    pass
            f.close()

    def write(self, url: str, blocks: Iterator[bytes]) -> None:
        f = client.File()
        # NEW: never replace an existing replica. POSC: the server drops the file unless we close it successfully,
        # so a pilot killed mid-upload leaves nothing that looks complete.
        status, _ = f.open(url, OpenFlags.NEW | OpenFlags.MAKEPATH | OpenFlags.POSC)
        self._check(status, url, "put")
        inflight: deque[_Request] = deque()
        try:
            offset = 0
            for block in blocks:
                req = _Request(buffer=block)
                self._check(self._submit(inflight, url, "put", f.write, block, offset, callback=req), url, "put")
                inflight.append(req)
                offset += len(block)
                while len(inflight) >= WINDOW:
                    self._check(inflight.popleft().wait()[0], url, "put")
            while inflight:
                self._check(inflight.popleft().wait()[0], url, "put")
            status, _ = f.close()
            self._check(status, url, "put", "close")
        except BaseException as e:
            note = self._abandon(f, url, inflight)
            if isinstance(e, StorageError):
                raise type(e)(f"{e.what} ({note})", se=e.se, url=e.url, op=e.op) from e
            if isinstance(e, Exception):
                raise TransferError(f"{e} ({note})", se=self._se, url=url, op="put") from e
            raise  # KeyboardInterrupt, SystemExit: cleaned up, now let it through unchanged

    def _abandon(self, f: Any, url: str, inflight: deque[_Request]) -> str:
        """After a failed upload: drain, close, remove the partial file. Says whether the removal worked."""
        for req in inflight:
            try:
                req.wait()
            except TimeoutError:
                pass
        try:
            f.close()
        except Exception:  # noqa: BLE001 - closing a broken file: any failure here adds nothing to the cause
            pass
        endpoint, path = split_url(url)
        try:
            self.rm(endpoint, path, url)
            return "partial copy removed"
        except StorageError as e:
            return f"partial copy not removed: {e.what}"
