"""What both XRootD back ends share: client environment defaults, URL splitting, error mapping, the back-end protocol.

The two back ends are the official Python bindings (xrootd_bindings.py, PyPI `xrootd`) and the xrdcp/xrdfs commands
(xrootd_commands.py, Debian `xrootd-client`), used when the bindings cannot be imported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator, MutableMapping, Optional, Protocol

from gridpilot.errors import ChecksumUnavailable, FileAlreadyExists, NoSuchFile, StorageError, TransferError

# XrdCl reads these once, when its default environment is created (first use after import). Its own defaults
# (a 120 s connection window, 5 retries, a 1800 s request timeout) make a closed port or a dead server hang a pilot
# for 10 minutes or more; ours give up after about half a minute on connecting, 10 minutes on one request.
# A value already in the environment wins: a site can tune it.
CLIENT_ENV_DEFAULTS = {
    "XRD_CONNECTIONWINDOW": "15",
    "XRD_CONNECTIONRETRY": "2",
    "XRD_REQUESTTIMEOUT": "600",
}

# XRootD protocol error numbers (XProtocol.hh) that have a meaning of their own for us.
KXR_NOT_AUTHORIZED = 3010
KXR_NOT_FOUND = 3011
KXR_UNSUPPORTED = 3013
KXR_ITEM_EXISTS = 3018

_ERRNO_IN_TEXT = re.compile(r"\[(30\d\d)\]")


def apply_client_env(environ: Optional[MutableMapping[str, str]] = None) -> MutableMapping[str, str]:
    """Put the defaults into `environ` (os.environ when None) where not set already; returns it."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    for key, value in CLIENT_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def split_url(url: str) -> tuple[str, str]:
    """root://host:port//abs/path?opaque -> ("root://host:port", "/abs/path?opaque").

    XRootD writes absolute paths after a double slash; one slash means the same path here, so both are accepted.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("root", "xroot", "roots", "xroots"):
        raise ValueError(f"not an XRootD URL: {url!r}")
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f"no host in XRootD URL: {url!r}")
    return f"{scheme}://{host}", ("/" + path.lstrip("/")) if slash else "/"


def error_for(message: str, errno: int, *, se: str, url: str, op: str, what: str = "") -> StorageError:
    """The StorageError for a failed XRootD request; `errno` 0 means "look for [30xx] in the message"."""
    if not errno:
        m = _ERRNO_IN_TEXT.search(message)
        errno = int(m.group(1)) if m else 0
    text = " ".join(message.split())  # XRootD messages end in newlines and pad with spaces
    if what:
        text = f"{what}: {text}"
    if errno == KXR_NOT_FOUND or (not errno and "no such file" in message.lower()):
        return NoSuchFile(text, se=se, url=url, op=op)
    if errno == KXR_ITEM_EXISTS or (not errno and "file exists" in message.lower()):
        return FileAlreadyExists(text, se=se, url=url, op=op)
    if errno == KXR_UNSUPPORTED and op == "checksum":
        return ChecksumUnavailable(text, se=se, url=url, op=op)
    return TransferError(text, se=se, url=url, op=op)


def parse_checksum_reply(reply: str) -> tuple[str, str]:
    """ "adler32 94baa057\\0" -> ("adler32", "94baa057")."""
    parts = reply.replace("\x00", " ").split()
    if len(parts) < 2:
        raise ValueError(f"unexpected checksum reply {reply!r}")
    return parts[0].lower(), parts[1].lower()


@dataclass(frozen=True)
class RemoteStat:
    size: int
    is_dir: bool


class Backend(Protocol):
    """One way of talking XRootD. Every method raises StorageError subclasses that name `se`, op and URL.

    `endpoint` is "root://host:port" and `path` the absolute path (split_url), `url` the whole PFN.
    """

    name: str

    def stat(self, endpoint: str, path: str, url: str) -> RemoteStat: ...

    def checksum(self, endpoint: str, path: str, url: str, algo: str) -> tuple[str, str]:
        """(type the server answered with, value); the server may answer with its default type instead."""
        ...

    def rm(self, endpoint: str, path: str, url: str) -> None: ...

    def ls(self, endpoint: str, path: str, url: str) -> list[tuple[str, RemoteStat]]: ...

    def read_blocks(self, url: str) -> Iterator[bytes]: ...

    def write(self, url: str, blocks: Iterator[bytes]) -> None:
        """Create `url` (parents too; FileAlreadyExists if it exists), write `blocks` in order, close.

        Persist-on-successful-close: if the client dies mid-way the server drops the file. On a failure after the
        file was created, the back end removes it when it can and says in the error whether it did.
        """
        ...
