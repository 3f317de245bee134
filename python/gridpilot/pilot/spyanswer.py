"""The JobAgent's side of `gridpilot spy`: it reads the end of the payload's stdout or stderr, or lists the work
directory, and posts that to central as the answer to a spy request (central/spy.py) it got with a control poll or
heartbeat answer (pilot/heartbeat.py).

The work directory belongs to the payload, which may be hostile: it can replace `stdout` by a symbolic link to
/etc/shadow, by a FIFO no one writes to, or by a file of terabytes. So the agent reads through a descriptor of the
work directory opened without following a link, opens the file relative to it with O_NOFOLLOW (a link is refused,
never followed) and O_NONBLOCK (opening a FIFO does not wait for a writer), reads only a regular file with one link,
and reads only its end, at most `max_bytes`, with one pread: whatever the payload does, an answer costs a few
system calls and a bounded read, and the agent's loop never blocks on it. What it refuses is answered with the
reason (`refused`), which the user sees.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from gridpilot.client import API, CentralClient
from gridpilot.errors import CentralError, CentralUnreachable

log = logging.getLogger("gridpilot.agent")

#: The bounds central sets on an answer (central/spy.py), used when a command does not carry its own: the agent
#: never reads more than these, whatever a command asks.
MAX_BYTES = 64 << 10
MAX_ENTRIES = 1000
MAX_LINES = 10_000
#: The longest name a listing carries, in characters (central refuses longer).
MAX_NAME = 255
#: Request ids remembered as done, so that a command repeated by the next poll before central stored the answer is
#: not answered twice; the oldest are forgotten beyond this.
REMEMBERED = 256
#: Tries per request: an answer central refuses is not sent again and again at every poll.
MAX_TRIES = 3

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Refused(Exception):
    """What was asked is not shown; the message says why (for the user)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a link")):
        if test(mode):
            return name
    return "not a regular file"


def _open_workdir(workdir: Path) -> int:
    try:
        return os.open(workdir, _DIR_FLAGS)
    except FileNotFoundError:
        raise Refused("the work directory is gone") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused("the work directory was replaced by something that is not a directory: not read") from None
        raise Refused(f"the work directory cannot be opened: {e.strerror}") from None


def read_tail(workdir: Path, name: str, *, lines: int, offset: Optional[int] = None,
              max_bytes: int = MAX_BYTES) -> Dict[str, Any]:
    """The end of `workdir/name`: at most `max_bytes` and `lines` lines, as {"text", "start", "end", "size"} (byte
    positions of what `text` holds). With `offset` (`spy --follow`), only what lies after it, and only whole lines
    (the part of a line still being written comes with the next request), unless a line is longer than max_bytes.
    Refused when the file is not a regular file of the work directory."""
    max_bytes = max(1, min(max_bytes, MAX_BYTES))
    lines = max(1, min(lines, MAX_LINES))
    dfd = _open_workdir(workdir)
    try:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise Refused(f"the job has no {name} file (yet)") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Refused(f"{name} is a symbolic link: not followed") from None
            raise Refused(f"{name} cannot be opened: {e.strerror}") from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{name} is {_kind(st.st_mode)}, not a regular file: not read")
        if st.st_nlink != 1:
            # A hard link made by the payload to a file elsewhere (the payload's own output has one link).
            raise Refused(f"{name} has {st.st_nlink} hard links: not read")
        size = st.st_size
        start = max(0, size - max_bytes)
        if offset is not None and offset <= size:
            start = max(start, offset)
        data = os.pread(fd, size - start, start) if size > start else b""
    finally:
        os.close(fd)
    end = start + len(data)
    if offset is not None:
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[:cut + 1]
            end = start + len(data)
        elif len(data) < max_bytes:
            data, end = b"", start  # a line still being written: next time
    if start > (offset or 0):
        # The window began inside a line (more was written than one answer carries): that part is left out.
        first = data.find(b"\n")
        if 0 <= first < len(data) - 1:
            data, start = data[first + 1:], start + first + 1
    # The last `lines` lines (a last line without its newline counts as one).
    body = data[:-1] if data.endswith(b"\n") else data
    n = body.count(b"\n") + 1 if body else 0
    if n > lines:
        at = -1
        for _ in range(n - lines):
            at = body.index(b"\n", at + 1)
        start += at + 1
        data = data[at + 1:]
    # NUL is the one character central cannot store in text (PostgreSQL): shown as U+FFFD, as undecodable bytes are.
    text = data.decode("utf-8", "replace").replace("\0", "\ufffd")
    return {"text": text, "start": start, "end": end, "size": size}


def list_workdir(workdir: Path, *, max_entries: int = MAX_ENTRIES) -> Dict[str, Any]:
    """The top level of the work directory: {"entries": [{name, type, size, mtime}], "more": bool}, at most
    `max_entries` sorted by name; links are listed as links (lstat), never followed."""
    max_entries = max(1, min(max_entries, MAX_ENTRIES))
    dfd = _open_workdir(workdir)
    entries: List[Dict[str, Any]] = []
    more = False
    try:
        with os.scandir(dfd) as it:
            for e in it:
                if len(entries) >= max_entries:
                    more = True
                    break
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                kind = ("link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                        else "file" if stat.S_ISREG(st.st_mode) else "other")
                name = os.fsencode(e.name).decode("utf-8", "replace").replace("\0", "\ufffd")[:MAX_NAME]
                entries.append({"name": name, "type": kind, "size": int(st.st_size), "mtime": float(st.st_mtime)})
    finally:
        os.close(dfd)
    entries.sort(key=lambda x: x["name"])
    return {"entries": entries, "more": more}


def answer_for(workdir: Path, command: Dict[str, Any]) -> Dict[str, Any]:
    """The answer's body (without the resubmission) to one `spy` command."""
    what = command.get("what")
    try:
        if what == "workdir":
            return list_workdir(workdir, max_entries=int(command.get("max_entries") or MAX_ENTRIES))
        if what in ("stdout", "stderr"):
            offset = command.get("offset")
            return read_tail(workdir, what, lines=int(command.get("lines") or 50),
                             offset=int(offset) if offset is not None else None,
                             max_bytes=int(command.get("max_bytes") or MAX_BYTES))
        return {"refused": f"this pilot does not know how to show {str(what)[:40]!r}"}
    except Refused as e:
        return {"refused": str(e)}


class SpyAnswers:
    """Answers one run's spy commands. `client_factory` makes the client the answers go with (the job's token)."""

    def __init__(self, client_factory: Callable[[], CentralClient], job_id: int, resubmission: int,
                 workdir: Path) -> None:
        self._factory = client_factory
        self._client: Optional[CentralClient] = None
        self.job_id = job_id
        self.resubmission = resubmission
        self.workdir = workdir
        self._done: Set[int] = set()
        self._tries: Dict[int, int] = {}

    def handle(self, commands: List[Dict[str, Any]]) -> None:
        for cmd in commands:
            rid = cmd.get("request")
            if cmd.get("job_id") != self.job_id or not isinstance(rid, int) or rid in self._done:
                continue
            if not self._answer(rid, cmd):
                # Central is away: the loop that watches the payload waits no longer for it; the next poll that
                # gets through hands the requests out again.
                break

    def _answer(self, rid: int, cmd: Dict[str, Any]) -> bool:
        """Send one answer; False when central could not be reached (or answered 5xx)."""
        body = answer_for(self.workdir, cmd)
        body["resubmission"] = self.resubmission
        if self._client is None:
            self._client = self._factory()
        try:
            self._client.request("POST", f"{API}/jobs/{self.job_id}/spy/{rid}/answer", body=body, idempotent=True)
        except (CentralError, CentralUnreachable) as e:
            tries = self._tries[rid] = self._tries.get(rid, 0) + 1
            log.warning("job %d: spy request %d not answered (try %d of %d): %s", self.job_id, rid, tries,
                        MAX_TRIES, e)
            away = not (isinstance(e, CentralError) and 400 <= e.status < 500)
            if tries < MAX_TRIES and away:
                return False
        else:
            log.info("job %d: spy request %d answered (%s)", self.job_id, rid,
                     "refused: " + body["refused"] if "refused" in body else cmd.get("what"))
        self._tries.pop(rid, None)
        self._done.add(rid)
        if len(self._done) > REMEMBERED:
            self._done.discard(min(self._done))
        return True

    @classmethod
    def for_run(cls, client: CentralClient, job_token: str, ca_pem: Optional[str], job_id: int, resubmission: int,
                workdir: Path) -> SpyAnswers:
        """Answers sent with the job's own token (central checks it is this run's), to the agent's central: a short
        timeout and one retry, since the agent's loop waits for them."""
        return cls(lambda: CentralClient(client.url, job_token, timeout=5.0, retries=1, ca_file=client.ca_file,
                                         ca_data=ca_pem), job_id, resubmission, workdir)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


__all__ = ["MAX_BYTES", "MAX_ENTRIES", "Refused", "SpyAnswers", "answer_for", "list_workdir", "read_tail"]
