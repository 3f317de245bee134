"""The acknowledged JSON-lines link between JobWrapper and JobAgent, over real pipes and a real second process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import orjson
import pytest

from gridpilot.pilot.protocol import AgentChannel, Handover, ProtocolError, WrapperChannel


def pipes():
    a_r, w_w = os.pipe()  # wrapper -> agent
    w_r, a_w = os.pipe()  # agent -> wrapper
    return (w_r, w_w), (a_r, a_w)


def test_messages_arrive_in_order_and_are_acknowledged():
    (w_r, w_w), (a_r, a_w) = pipes()
    code = textwrap.dedent(
        f"""
        from gridpilot.pilot.protocol import WrapperChannel
        ch = WrapperChannel({w_r}, {w_w}, ack_timeout=10)
        ch.send("state", state="STARTED")
        ch.send("trace", text="x" * 100000)
        ch.send("payload", pid=1234)
        ch.send("result", state="DONE", kill_reason="OK", exit_code=0, rusage={{}})
        print("all acknowledged", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", code], pass_fds=(w_r, w_w), stdout=subprocess.PIPE, text=True)
    os.close(w_r)
    os.close(w_w)
    agent = AgentChannel(a_r, a_w)
    got = []
    while len(got) < 4:
        msg = agent.receive(timeout=10)
        assert msg is not None
        got.append(msg)
        agent.ack(msg)
    assert [m["type"] for m in got] == ["state", "trace", "payload", "result"]
    assert [m["seq"] for m in got] == [1, 2, 3, 4]
    assert len(got[1]["text"]) == 100000
    assert p.communicate(timeout=10)[0].strip() == "all acknowledged"
    with pytest.raises(ProtocolError, match="closed"):
        agent.receive(timeout=5)


def test_wrapper_waits_for_the_ack_and_gives_up():
    (w_r, w_w), (a_r, a_w) = pipes()
    ch = WrapperChannel(w_r, w_w, ack_timeout=0.2)
    with pytest.raises(ProtocolError, match="no acknowledgement of message 1"):
        ch.send("state", state="STARTED")
    agent = AgentChannel(a_r, a_w)
    assert agent.receive(timeout=1)["state"] == "STARTED"


def test_agent_gone_is_a_protocol_error():
    (w_r, w_w), (a_r, a_w) = pipes()
    os.close(a_r)
    os.close(a_w)
    ch = WrapperChannel(w_r, w_w, ack_timeout=5)
    with pytest.raises(ProtocolError):
        ch.send("state", state="STARTED")


@pytest.mark.parametrize(
    "line,error",
    [
        (b"not json\n", "not JSON"),
        (b"[1,2]\n", "not a JSON object"),
        (b'{"type": "state"}\n', "integer seq"),
        (b'{"seq": 5, "type": "state"}\n', "out of order"),
    ],
)
def test_agent_rejects_bad_lines(line, error):
    r, w = os.pipe()
    os.write(w, line)
    agent = AgentChannel(r, os.open(os.devnull, os.O_WRONLY))
    with pytest.raises(ProtocolError, match=error):
        agent.receive(timeout=1)


def test_drain_acknowledges_everything_left():
    (w_r, w_w), (a_r, a_w) = pipes()
    for i in (1, 2):
        os.write(w_w, b'{"seq": %d, "type": "trace", "text": "t"}\n' % i)
    agent = AgentChannel(a_r, a_w)
    assert [m["seq"] for m in agent.drain(0.2)] == [1, 2]
    assert os.read(w_r, 100) == b'{"ack":1}\n{"ack":2}\n'


def test_the_hand_over_goes_to_the_wrapper_as_one_json_object_and_comes_back_whole():
    h = Handover(job_id=7, central_url="https://central:8443", token="a.b.c", resubmission=2, ca_pem="PEM",
                 jdl='Executable = "/bin/true";', workdir="/w", close_se=["A::B::C"], output_dir="/out",
                 storage=[{"name": "A::B::C", "url": "file:///se", "close": True}], env={"CUDA_VISIBLE_DEVICES": "0"},
                 site="S", ce="S::CE", stdout_max_mb=5,
                 packages={"command": ["/cvmfs/alice.cern.ch/bin/alienv", "printenv"], "arguments": "joined",
                           "timeout": 300.0}, upload_grace_s=60.0,
                 offline={"inputs": [{"lfn": "/a/b", "pfn": "file:///job/b", "size": 3, "adler32": None, "md5": None}]})
    data = h.to_json()
    assert set(orjson.loads(data)) == {"job_id", "resubmission", "token", "central_url", "ca_pem", "jdl", "workdir",
                                       "close_se", "output_dir", "storage", "env", "site", "ce", "stdout_max_mb",
                                       "packages", "upload_grace_s", "offline"}
    assert Handover.from_json(data) == h
    with pytest.raises(ProtocolError, match="not a JSON object"):
        Handover.from_json(b"[1]")
