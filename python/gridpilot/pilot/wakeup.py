"""Waking a select loop at once on signals, so it need not poll in short steps to notice one.

Python runs a signal's handler between bytecodes, and a select interrupted by the signal is resumed (PEP 475): a loop
that sleeps in select sees what the handler did only when its wait ends. signal.set_wakeup_fd makes the signal write a
byte to a pipe the loop also selects on, so the wait ends with the signal. The pilot's loops use it for SIGTERM and
SIGINT (the slot ends) and SIGCHLD (a child exited; a no-op handler is installed so that it is delivered at all).
"""

from __future__ import annotations

import os
import signal


class SignalWakeup:
    """Install in the main thread; `fd` becomes readable when a signal with a Python handler arrives. `drain()` after
    each wake, `close()` at the end (the previous wake-up descriptor and SIGCHLD handler come back)."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)

    def drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.signal(signal.SIGCHLD, self._old_chld)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self.fd)
        os.close(self._w)
