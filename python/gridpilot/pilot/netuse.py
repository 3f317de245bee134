"""Network bytes of a job that has a network namespace of its own.

/proc/<pid>/net/dev lists the interfaces of the namespace `pid` is in, with counters since each interface was made.
Where the job shares the node's namespace (Podman's --network host, bubblewrap and unshare as gridpilot runs them,
no container) those counters are the whole node's, not the job's: nothing is reported then. Where its root process
is in another namespace than the agent's (a payload that ran `unshare -n`, a runtime configured with a network of its
own), every counter in it is the job's. Loopback is left out: traffic a job sends to itself never leaves it.

The namespace is compared again at every read, not once: the payload may enter its own namespace after it started
(`unshare -n cmd` execs in place, keeping its pid).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple


def netns_of(pid: "int | str", proc: str = "/proc") -> Optional[str]:
    """The namespace link (`net:[4026531840]`), or None when the process is gone or unreadable."""
    try:
        return os.readlink(f"{proc}/{pid}/ns/net")
    except OSError:
        return None


def parse_net_dev(text: str) -> Tuple[int, int]:
    """(rx bytes, tx bytes) summed over the interfaces of a /proc/net/dev text, loopback excluded. Lines that are
    not `name: 16 numbers` (the two header lines) are skipped."""
    rx = tx = 0
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        name = name.strip()
        if name == "lo" or len(fields) < 16 or not fields[0].isdigit():
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


class NetSampler:
    """The network counters of the job whose root process is `root_pid`, when it has a namespace of its own."""

    def __init__(self, root_pid: int, proc: str = "/proc") -> None:
        self.root_pid = root_pid
        self.proc = proc
        self.own = netns_of("self", proc)
        #: The last counters read, kept when the root has exited (the namespace went with it).
        self.last: Optional[Tuple[int, int]] = None

    def sample(self) -> Optional[Tuple[int, int]]:
        ns = netns_of(self.root_pid, self.proc)
        if ns is None or self.own is None or ns == self.own:
            return self.last
        try:
            with open(f"{self.proc}/{self.root_pid}/net/dev") as f:
                self.last = parse_net_dev(f.read())
        except OSError:
            pass
        return self.last
