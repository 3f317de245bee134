"""The JSON-lines link between a JobWrapper and its JobAgent: every message is acknowledged.

The wrapper sends `{"seq": n, "type": ..., ...}` lines and waits for `{"ack": n}` before going on, so a state the
wrapper reported is known to have reached the agent (which forwards it to central) before the wrapper acts on it.
Two pipes, one per direction, passed to the wrapper as inherited descriptors; the wrapper's stdin carries only the
job hand-over (JDL, job id, job token) and is closed after it.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import orjson

from gridpilot.errors import GridpilotError
from gridpilot.isolation import JOIN_CGROUP_FDS_ENV as JOIN_CGROUP_FDS_ENV  # the wrapper's end of the launch

#: Message types the wrapper sends.
STATE = "state"  # {"state": name, "kill_reason"?: name, "exit_code"?: int, "message"?: str}
PAYLOAD = "payload"  # {"pid": int, "pidns": inode}: the payload started, in its own session; pid as seen in the
#                       PID namespace whose /proc/self/ns/pid inode is pidns (the agent resolves its own pid from it)
TRACE = "trace"  # {"text": str}
RESULT = "result"  # {"state": final name, "kill_reason": name, "exit_code": int|None, "rusage": {...}}
UPLOADS = "uploads"  # {"pending": [names], "current": name|None}: after a limit kill, the outputs not uploaded yet
#                       (current: the one under way), so the agent can say which were lost if it must kill the wrapper
REGISTERED = "registered"  # {"lfn", "size", "adler32", "md5", "se", "pfn"}: offline only (pilot/offline.py), an
#                             output verified in the job's outputs directory, for result.json

#: Why the agent ended the payload, told to the wrapper by a signal of its own: a signal reaches the wrapper whatever
#: it is doing (blocked in a stage-in, an upload, a wait for central), where a message on the ack pipe would be read
#: only at its next send. The agent signals the wrapper *before* it kills the payload, so the wrapper knows the cause
#: by the time it sees the payload's exit.
#: SIGTERM: the slot is ending (the batch system's SIGTERM passed on): outputs are uploaded within drain_grace.
SIGNAL_SLOT_ENDING = signal.SIGTERM
#: A limit is broken (TTL, memory, disk...): the outputs that exist and the logs are uploaded within the upload grace
#: (Handover.upload_grace_s), then the agent kills the wrapper.
SIGNAL_LIMIT_KILL = signal.SIGUSR1
#: Central killed the job: nothing is uploaded; the wrapper ends as soon as the payload is gone, a wait for central's
#: catalogue ends at once (the copy it was for removed), an upload under way is the last (the agent kills the wrapper
#: if it is still there shortly after).
SIGNAL_CENTRAL_KILL = signal.SIGUSR2

#: A line longer than this is a protocol violation, not a message (it would be a runaway payload writing to us).
MAX_LINE = 1 << 20


class ProtocolError(GridpilotError):
    """The other end sent something that is not a message, or went away."""


@dataclass(frozen=True)
class Handover:
    """What the JobAgent tells its JobWrapper about the job: one JSON document on the wrapper's stdin, which is then
    closed. The wrapper holds the job token and no other secret of the pilot."""

    job_id: int
    #: Central's URL and the job token, for the wrapper's catalogue calls (pilot/staging.py).
    central_url: str
    token: str
    #: How many times central gave the job out before (ALIEN_RESUBMISSION in the payload's environment).
    resubmission: int = 0
    #: The text of the CA bundle central is verified with (the wrapper may not see the file, in a container).
    ca_pem: Optional[str] = None
    jdl: str = ""
    #: The job's work directory as the wrapper sees it (inside a container: where it is mounted).
    workdir: str = ""
    #: The pilot's close storage elements, closest first: used when central's list marks none close.
    close_se: List[str] = field(default_factory=list)
    #: The catalogue directory of the job's outputs; None: /gridpilot/jobs/<job id>.
    output_dir: Optional[str] = None
    #: The storage elements central listed in the match ({name, url, close?}); None: ask central for them.
    storage: Optional[List[Dict[str, Any]]] = None
    #: Variables for the payload's environment on top of the pilot's (the GPUs it may use).
    env: Dict[str, str] = field(default_factory=dict)
    site: Optional[str] = None
    ce: Optional[str] = None
    #: MB kept of each of the payload's stdout and stderr; 0: no cap.
    stdout_max_mb: int = 0
    #: The site's packages settings (pilot/packages.py PackagesSettings.to_dict); empty: ALICE's defaults.
    packages: Dict[str, Any] = field(default_factory=dict)
    #: Seconds the wrapper has, after SIGNAL_LIMIT_KILL, to upload what exists (the site's ttl_upload_grace).
    upload_grace_s: float = 3600.0
    #: Set when the job runs offline (`gridpilot offline`, no central): {"inputs": [{lfn, pfn, size, adler32, md5}]},
    #: the catalogue the wrapper stages from (pilot/offlinecatalogue.py); `storage` then names the job directory's
    #: elements, and central_url and token are empty.
    offline: Optional[Dict[str, Any]] = None

    def to_json(self) -> bytes:
        # Every field: the keys of the JSON object the agent wrote before this was a dataclass.
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes) -> Handover:
        d = orjson.loads(data)
        if not isinstance(d, dict):
            raise ProtocolError(f"the hand-over is not a JSON object: {data[:200]!r}")
        return cls(**d)


class _LineReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def read_line(self, timeout: Optional[float], wake_fds: Sequence[int] = ()) -> Optional[bytes]:
        """One line without its newline; None on timeout, or as soon as one of `wake_fds` is readable; ProtocolError
        at EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                raise ProtocolError("the other end closed the channel")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd, *wake_fds], [], [], wait)
            if self.fd not in ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
            if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError as e:
            raise ProtocolError("the other end closed the channel") from e
        view = view[n:]


def _decode(line: bytes) -> Dict[str, Any]:
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {line[:200]!r}: {e}") from e
    if not isinstance(msg, dict):
        raise ProtocolError(f"not a JSON object: {line[:200]!r}")
    return msg


class WrapperChannel:
    """The wrapper's end: send a message, wait for its acknowledgement."""

    def __init__(self, read_fd: int, write_fd: int, *, ack_timeout: float = 120.0) -> None:
        self._reader = _LineReader(read_fd)
        self._write_fd = write_fd
        self._seq = 0
        self.ack_timeout = ack_timeout

    def send(self, type_: str, **fields: Any) -> None:
        self._seq += 1
        seq = self._seq
        _write_all(self._write_fd, orjson.dumps({"seq": seq, "type": type_, **fields}) + b"\n")
        deadline = time.monotonic() + self.ack_timeout
        while True:
            line = self._reader.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise ProtocolError(f"no acknowledgement of message {seq} ({type_}) within {self.ack_timeout:.0f} s")
            ack = _decode(line)
            if ack.get("ack") == seq:
                return
            if isinstance(ack.get("ack"), int) and ack["ack"] < seq:
                continue  # a late duplicate acknowledgement
            raise ProtocolError(f"expected the acknowledgement of {seq}, got {ack!r}")


class AgentChannel:
    """The agent's end: receive messages (in order, none twice) and acknowledge each once it is handled."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = _LineReader(read_fd)
        self._write_fd = write_fd
        self._last_seq = 0

    def receive(self, timeout: Optional[float] = 0.0, wake_fds: Sequence[int] = ()) -> Optional[Dict[str, Any]]:
        """The next message, or None when none arrived within `timeout` or one of `wake_fds` became readable first.
        ProtocolError when the wrapper is gone."""
        line = self._reader.read_line(timeout, wake_fds)
        if line is None:
            return None
        msg = _decode(line)
        seq = msg.get("seq")
        if not isinstance(seq, int) or not isinstance(msg.get("type"), str):
            raise ProtocolError(f"a message needs an integer seq and a type: {msg!r}")
        if seq != self._last_seq + 1:
            raise ProtocolError(f"message {seq} out of order (after {self._last_seq})")
        self._last_seq = seq
        return msg

    def ack(self, msg: Dict[str, Any]) -> None:
        _write_all(self._write_fd, orjson.dumps({"ack": msg["seq"]}) + b"\n")

    def drain(self, timeout: float) -> List[Dict[str, Any]]:
        """Receive and acknowledge everything that arrives within `timeout` (at the end of a job)."""
        out: List[Dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.receive(max(0.0, deadline - time.monotonic()))
            except ProtocolError:
                return out
            if msg is None:
                return out
            out.append(msg)
            try:
                self.ack(msg)
            except ProtocolError:
                # The other end is gone (killed right after it wrote): what it said still counts, nothing more comes.
                return out
