"""gridpilot.client against a scripted HTTP server: retries, backoff, what is never repeated, error mapping."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Tuple

import orjson
import pytest

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable

Reply = Tuple[int, bytes]


class Script:
    """Answers requests in order from a list of (status, body) or callables; records what it got."""

    def __init__(self, replies: List[object]) -> None:
        self.replies = list(replies)
        self.seen: List[Tuple[str, str, dict, bytes]] = []

    def next(self) -> object:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def server():
    holder = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # keep test output clean
            pass

        def _any(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            script: Script = holder["script"]
            script.seen.append((self.command, self.path, dict(self.headers), body))
            reply = script.next()
            if callable(reply):
                reply = reply()
            status, data = reply
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _any

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()

    def use(replies: List[object]) -> Tuple[str, Script]:
        holder["script"] = Script(replies)
        return f"http://127.0.0.1:{httpd.server_address[1]}", holder["script"]

    yield use
    httpd.shutdown()
    httpd.server_close()


def ok(obj: object, status: int = 200) -> Reply:
    return status, orjson.dumps(obj)


def err(status: int, code: str, message: str, **extra: object) -> Reply:
    return status, orjson.dumps({"error": {"code": code, "message": message, **extra}})


def fast(url: str, token: str = "tok", **kw) -> CentralClient:
    kw.setdefault("backoff", 0.001)
    return CentralClient(url, token, **kw)


def test_reads_are_retried_after_5xx(server):
    url, script = server([err(503, "unavailable", "busy"), (502, b"<html>bad gateway</html>"),
                          ok({"id": 7, "state": "RUNNING"})])
    assert fast(url).get_job(7)["state"] == "RUNNING"
    assert len(script.seen) == 3
    method, path, headers, _ = script.seen[0]
    assert (method, path, headers["Authorization"]) == ("GET", "/api/v1/jobs/7", "Bearer tok")


def test_state_reports_and_heartbeats_are_retried_too(server):
    url, script = server([(500, b""), ok({"id": 1, "state": "RUNNING"}), (503, b""), ok({"commands": []})])
    c = fast(url)
    assert c.set_status(1, "RUNNING", 0, exit_code=None, message="m")["state"] == "RUNNING"
    assert orjson.loads(script.seen[0][3]) == {"state": "RUNNING", "resubmission": 0, "message": "m"}
    assert c.heartbeats([{"job_id": 1, "resubmission": 0}]) == []
    assert len(script.seen) == 4


def test_submit_and_match_are_not_repeated_after_5xx(server):
    url, script = server([err(500, "internal", "boom")])
    c = fast(url)
    with pytest.raises(CentralError) as info:
        c.submit('Executable = "/bin/true";')
    assert (info.value.status, info.value.code) == (500, "internal")
    with pytest.raises(CentralError):
        c.match({"ttl": 1})
    assert len(script.seen) == 2


def test_retries_give_up_with_central_unreachable(server):
    url, script = server([(503, b"")])
    with pytest.raises(CentralError) as info:
        fast(url, retries=2).get_job(1)
    assert info.value.status == 503 and len(script.seen) == 3, "the last 5xx is reported as it is"


def test_unreachable_central_is_retried_with_growing_pauses_for_every_call(monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps: List[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    c = CentralClient(f"http://127.0.0.1:{port}", "t", retries=4, backoff=0.2, max_backoff=1.0)
    with pytest.raises(CentralUnreachable) as info:
        c.submit('Executable = "/bin/true";')  # never sent, so even a submit is tried again
    assert "after 5 attempts" in str(info.value) and info.value.url == f"http://127.0.0.1:{port}"
    assert len(sleeps) == 4
    for i, d in enumerate(sleeps):
        step = min(1.0, 0.2 * 2 ** i)
        assert step / 2 <= d <= step
    assert sleeps[-1] <= 1.0


def test_timeouts_are_retried_only_for_idempotent_calls(server):
    def slow() -> Reply:
        time.sleep(0.5)
        return ok({"jobs": []})

    url, script = server([slow, ok({"jobs": []})])
    assert fast(url, timeout=0.2).list_jobs() == []
    assert len(script.seen) == 2
    url, script = server([slow])
    with pytest.raises(CentralUnreachable, match="not safe to repeat"):
        fast(url, timeout=0.2).append_trace(1, [{"category": "trace", "text": "x"}])
    assert len(script.seen) == 1


def test_error_bodies_become_central_errors(server):
    url, _ = server([err(400, "invalid_jdl", "expected a value", line=3, column=28)])
    with pytest.raises(CentralError) as info:
        fast(url).submit("x")
    e = info.value
    assert (e.status, e.code, e.message, e.line, e.column) == (400, "invalid_jdl", "expected a value", 3, 28)
    assert str(e) == "central answered 400 invalid_jdl: expected a value (line 3, column 28)"
    again = pickle.loads(pickle.dumps(e))
    assert (again.status, again.code, again.line) == (400, "invalid_jdl", 3)
    url, _ = server([(404, b"<html>no</html>")])
    with pytest.raises(CentralError) as info:
        fast(url).get_job(1)
    assert (info.value.code, info.value.message) == ("http_404", "<html>no</html>")


def test_match_answers_none_on_204_and_encodes_enums(server):
    from gridpilot.states import JobStatus, KillReason

    url, script = server([(204, b""), ok({"id": 1, "state": "ERROR_E"})])
    c = fast(url)
    assert c.match({"ttl": 10, "cores": 1}) is None
    c.set_status(1, JobStatus.ERROR_E, 0, kill_reason=KillReason.TTL)
    assert orjson.loads(script.seen[1][3]) == {"state": "ERROR_E", "resubmission": 0, "kill_reason": "TTL"}
    assert script.seen[1][2]["Content-Type"] == "application/json"


def test_query_parameters(server):
    url, script = server([ok({"jobs": []}), ok({"entries": []})])
    c = fast(url)
    c.list_jobs(user="alice", state=["RUNNING", "SAVING"], site=None, limit=5)
    assert script.seen[0][1] == "/api/v1/jobs?user=alice&state=RUNNING%2CSAVING&limit=5"
    c.trace(3, since=12.5)
    assert script.seen[1][1] == "/api/v1/jobs/3/trace?since=12.5"


def test_url_must_be_http():
    with pytest.raises(ValueError):
        CentralClient("ftp://x", "t")
