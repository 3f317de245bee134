"""The JobAgent's end of the link over which its JobRunner sends heartbeats and control polls for all of its jobs
at once (pilot/bulkbeats.py is the runner's end; docs/pilot.md, docs/scaling.md).

The runner writes the agent's settings as the first line of its stdin and, when it sends the heartbeats in bulk,
HELLO as the second, and keeps stdin open: the agent then writes its samples as `heartbeat` events on stdout and
the runner writes it its part of every answer (kills, spy commands, rejections, or that central was away) as one
JSON line on stdin. A runner older than that writes the settings and closes stdin: the agent heartbeats and polls
on its own, as before. So does an agent whose runner's end closes (the runner died) or stays silent too long.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import orjson

log = logging.getLogger("gridpilot.agent")

#: The runner's second line: it takes the agent's samples and polls central for it.
HELLO: Dict[str, Any] = {"runner": "bulk", "version": 1}
#: The most the agent reads of its settings and the runner's hello before it gives up on a line end.
MAX_HANDSHAKE = 16 * 1024 * 1024


class RunnerLink:
    """The runner's lines to this agent, read without blocking from `fd`."""

    def __init__(self, fd: int, pending: bytes = b"") -> None:
        self.fd = fd
        self.buf = pending
        #: False once the runner's end closed, or the agent stopped listening (fallback()).
        self.open = True
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> List[Dict[str, Any]]:
        """The lines the runner wrote since the last call; sets `open` False at the end of the stream."""
        if not self.open:
            return []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("the runner's link could not be read (%s): the agent reports on its own", e)
                self.open = False
                break
            if not chunk:
                self.open = False
                break
            self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            if line.strip():
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("the runner wrote a line that is not JSON: %r", line[:200])
                    continue
                if isinstance(msg, dict):
                    out.append(msg)
        return out

    def close(self) -> None:
        if self.open:
            self.open = False
        try:
            os.close(self.fd)
        except OSError:
            pass


def handshake(fd: int) -> Tuple[bytes, Optional[RunnerLink]]:
    """Read the settings from `fd` (the agent's stdin), and the runner's hello if it sends one: the settings' JSON
    and the link (None: an older runner, which closed stdin after the settings)."""
    buf = b""
    while buf.count(b"\n") < 2 and len(buf) < MAX_HANDSHAKE:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    settings, sep, rest = buf.partition(b"\n")
    if not sep:
        return settings, None
    hello, sep, rest = rest.partition(b"\n")
    try:
        said = orjson.loads(hello) if sep else None
    except orjson.JSONDecodeError:
        said = None
    if said != HELLO:
        return settings, None
    return settings, RunnerLink(fd, rest)


__all__ = ["HELLO", "RunnerLink", "handshake"]
