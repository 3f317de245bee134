"""JobMonitor with its fast tier on the native thread (native_fast, as the JobAgent runs it), on real payloads.

The agent sleeps until the monitor's next_due or until its descriptor becomes readable; these tests do the same, with
a check_s far longer than any test, so a rule is seen only if the thread's alarm or next_due brings the poll."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gridpilot.pilot import protocol
from gridpilot.pilot.monitor import JobMonitor, parse_proc_line
from gridpilot.pilot.rules import Limits
from gridpilot.pilot.wakeup import SignalWakeup
from gridpilot.states import KillReason

MB = 1 << 20
#: Generous: a loaded CI machine may be slow to run the thread, never this slow.
DEADLINE_S = 60.0
#: Longer than any test: a poll that comes at all came from the alarm or from next_due.
NEVER_S = 3600.0


@pytest.fixture
def payload(tmp_path):
    procs = []

    def start(code: str = "pass") -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", code + "\nimport sys, time\nsys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(120)"],
            cwd=tmp_path, stdout=subprocess.PIPE, start_new_session=True,
        )
        procs.append(p)
        assert p.stdout.readline() == b"ok\n"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def native(p: subprocess.Popen, workdir: Path, **kw) -> JobMonitor:
    limits = kw.pop("limits", Limits())
    m = JobMonitor(p.pid, workdir, limits, native_fast=True, fast_s=kw.pop("fast_s", 0.05),
                   slow_s=kw.pop("slow_s", NEVER_S), check_s=kw.pop("check_s", NEVER_S), **kw)
    m.mark_running()
    return m


def wait_alarm(m: JobMonitor) -> bool:
    ready, _, _ = select.select([m.fileno()], [], [], DEADLINE_S)
    return bool(ready)


def run_as_the_agent(m: JobMonitor):
    """The agent's loop for the monitor alone: sleep until next_due or the alarm, poll; the first breach."""
    end = time.monotonic() + DEADLINE_S
    while True:
        select.select([m.fileno()], [], [], max(0.0, min(m.next_due, end) - time.monotonic()))
        if time.monotonic() >= end:
            return None  # nothing brought the poll back in time
        breach = m.poll()
        if breach is not None:
            return breach


def test_a_core_file_wakes_the_agent(payload, tmp_path):
    p = payload("open('core.inp', 'w').write('input')")
    m = native(p, tmp_path)
    try:
        assert m.poll() is None
        (tmp_path / "core.4242").write_bytes(b"\0" * 10)
        assert wait_alarm(m), "no alarm for a core file"
        b = m.poll()
        assert b is not None and b.reason == KillReason.CORE_DUMP and "core.4242" in b.message
        assert "core.inp" not in b.message
    finally:
        m.close()


def test_an_input_named_core_is_no_alarm(payload, tmp_path):
    (tmp_path / "core.inp").write_text("input")
    p = payload()
    m = native(p, tmp_path)
    try:
        end = time.monotonic() + DEADLINE_S
        ticks = 0
        while ticks < 3 and time.monotonic() < end:
            time.sleep(0.05)
            ticks += m.fast.take().ticks  # tick after tick has listed the directory, none found a core
        assert ticks >= 3
        assert m.poll() is None
        ready, _, _ = select.select([m.fileno()], [], [], 0)
        assert not ready
    finally:
        m.close()


def test_without_abort_on_core_a_core_file_breaks_nothing(payload, tmp_path):
    p = payload("open('core', 'w').write('dump')")
    m = native(p, tmp_path, limits=Limits(abort_on_core=False))
    try:
        assert m.poll() is None
    finally:
        m.close()


def test_ttl_is_polled_at_the_fast_cadence_near_its_end(payload, tmp_path):
    m = native(payload(), tmp_path, limits=Limits(ttl_s=1.0))
    try:
        b = run_as_the_agent(m)
        assert b is not None and b.reason == KillReason.TTL
    finally:
        m.close()


def test_idle_rule_is_polled_at_the_fast_cadence_near_its_end(payload, tmp_path):
    m = native(payload(), tmp_path, limits=Limits(idle_window_s=1.0, cores=1))
    try:
        b = run_as_the_agent(m)
        assert b is not None and b.reason == KillReason.IDLE_CPU
    finally:
        m.close()


def test_memory_from_pss_in_the_slow_tier(payload, tmp_path):
    p = payload("x = bytearray(60 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1")
    m = native(p, tmp_path, limits=Limits(memory_bytes=30 * MB))
    try:
        b = m.poll(force_slow=True)
        assert b is not None and b.reason == KillReason.MEMORY_USAGE and "pss+swap" in b.message
    finally:
        m.close()


def test_samples_peaks_and_cpu_reach_the_monitor(tmp_path):
    # Burns CPU, holds 40 MB until told to free it: CPU, samples and the peak reach the monitor through its takes.
    code = ("import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
            "x = bytearray(40 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
            "print('held', flush=True); sys.stdin.readline(); del x; print('freed', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    m = None
    try:
        assert p.stdout.readline() == "held\n"
        m = native(p, tmp_path, limits=Limits(cores=2))
        end = time.monotonic() + DEADLINE_S
        while m.peaks.rss < 40 * MB and time.monotonic() < end:
            time.sleep(0.05)
            m.poll()
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "freed\n"
        while m.resources()["rss_bytes"] >= 40 * MB and time.monotonic() < end:
            time.sleep(0.05)
            m.poll()
        r = m.resources()
        assert r["nprocs"] == 1 and r["cpu_s"] >= 0.25
        assert r["rss_max_bytes"] >= 40 * MB > r["rss_bytes"] > 0
        assert parse_proc_line(m.proc_line())["KSI2K"] == "1000"
    finally:
        if m is not None:
            m.close()
        p.kill()
        p.wait()
    assert not m.fast.running


def test_the_loop_wakes_on_the_wrapper_exit_and_on_signals():
    wakeup = SignalWakeup()
    try:
        child = subprocess.Popen(["true"])
        ready, _, _ = select.select([wakeup.fd], [], [], DEADLINE_S)
        assert ready, "SIGCHLD did not wake the loop"
        child.wait()
        wakeup.drain()
        assert not select.select([wakeup.fd], [], [], 0)[0]
        got = []
        old = signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            ready, _, _ = select.select([wakeup.fd], [], [], DEADLINE_S)
            assert ready and got
        finally:
            signal.signal(signal.SIGUSR1, old)
    finally:
        wakeup.close()


def test_receive_returns_when_a_wake_fd_is_readable():
    to_agent_r, to_agent_w = os.pipe()
    to_wrapper_r, to_wrapper_w = os.pipe()
    wake_r, wake_w = os.pipe()
    try:
        ch = protocol.AgentChannel(to_agent_r, to_wrapper_w)
        os.write(wake_w, b"x")
        # No timeout: without the wake descriptor the receive would wait for a message that never comes.
        got = []
        waiter = threading.Thread(target=lambda: got.append(ch.receive(timeout=None, wake_fds=[wake_r])), daemon=True)
        waiter.start()
        waiter.join(DEADLINE_S)
        assert got == [None], "receive did not return on the wake descriptor"
        os.write(to_agent_w, b'{"seq": 1, "type": "trace", "text": "hi"}\n')
        msg = ch.receive(timeout=DEADLINE_S, wake_fds=[wake_r])
        assert msg is not None and msg["text"] == "hi"
    finally:
        for fd in (to_agent_r, to_agent_w, to_wrapper_r, to_wrapper_w, wake_r, wake_w):
            os.close(fd)
