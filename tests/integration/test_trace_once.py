"""Every trace line arrives once: keyed entries are stored once per job however often they are sent, and an append
whose answer was lost (central killed after its commit, a dropped connection) is sent again, by the client and by
the agent's outbox, without a duplicate. Against a real central on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List

import pytest
import urllib3
from support.central import expect_error, jdl, site_map, start_world

from gridpilot.client import CentralClient
from gridpilot.errors import CentralUnreachable
from gridpilot.pilot.outbox import Outbox, Report


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def matched(world):
    """A WAITING job matched by an agent: (job id, a client holding its job token)."""
    jid = world.admin.submit(jdl())
    job = world.agent().match(site_map())
    assert job["id"] == jid
    return jid, world.client(job["token"])


def lines(world, jid, category="trace"):
    """The lines of `category` the test appended: not central's own `trace` line about the match, which follows its
    "Job ASSIGNED to:" state line (central/matching.py)."""
    return [(e["key"], e["text"]) for e in world.admin.trace(jid)
            if e["category"] == category and not (e["key"] is None and e["text"].startswith("ASSIGNED to agent "))]


def test_a_keyed_entry_is_stored_once_however_often_it_is_sent(world):
    jid, jc = matched(world)
    first = [{"category": "trace", "text": "one", "key": "0.abc.1"}, {"category": "trace", "text": "two", "key": "0.abc.2"}]
    assert jc.append_trace(jid, first) == 2
    assert jc.append_trace(jid, first) == 2, "a repeat is answered as if appended: the reporter lost the first answer"
    assert jc.append_trace(jid, [first[1], {"category": "proc", "text": "1 | 2", "key": "0.abc.3"}]) == 2
    assert lines(world, jid) == [("0.abc.1", "one"), ("0.abc.2", "two")]
    assert lines(world, jid, "proc") == [("0.abc.3", "1 | 2")]
    # Keys are the job's own: another job may use the same ones.
    other, oc = matched(world)
    assert oc.append_trace(other, first) == 2
    assert lines(world, other) == [("0.abc.1", "one"), ("0.abc.2", "two")]
    # Without keys (an admin's note, say) nothing can tell a repeat from a new line: both are kept.
    note = [{"category": "trace", "text": "note"}]
    world.admin.append_trace(jid, note)
    world.admin.append_trace(jid, note)
    assert [t for _, t in lines(world, jid)].count("note") == 2
    # Central's own lines have no key.
    assert all(e["key"] is None for e in world.admin.trace(jid) if e["category"] == "state")


@pytest.mark.parametrize("key, why", [
    ("k" * 65, "key must be 1 to 64"),
    ("", "key must be 1 to 64"),
    (5, "key must be 1 to 64"),
    ("a b", "key must be 1 to 64"),
    ("0.ä.1", "key must be 1 to 64"),
])
def test_a_bad_key_is_refused_naming_it_and_nothing_of_the_batch_is_stored(world, key, why):
    jid, jc = matched(world)
    n = len(world.admin.trace(jid))
    with expect_error(400, "bad_request") as e:
        jc.append_trace(jid, [{"category": "trace", "text": "fine", "key": "0.a.1"},
                              {"category": "trace", "text": "bad", "key": key}])
    assert "trace entry 1: key" in e.value.message and why in e.value.message
    assert len(world.admin.trace(jid)) == n


def test_a_key_twice_in_one_request_is_refused(world):
    jid, jc = matched(world)
    with expect_error(400, "bad_request") as e:
        jc.append_trace(jid, [{"category": "trace", "text": "a", "key": "0.a.1"},
                              {"category": "trace", "text": "b", "key": "0.a.1"}])
    assert "trace entry 1: key '0.a.1' repeats entry 0's" in e.value.message
    assert lines(world, jid) == []


class AnswerDropper:
    """An HTTP proxy in front of central that forwards every request and, for the first `drop` trace appends, throws
    the answer away and closes the connection: what the reporter sees when central is killed after its commit."""

    def __init__(self, target: str, drop: int) -> None:
        self.drop = drop
        self.forwarded: List[str] = []
        pool = urllib3.PoolManager(retries=False)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                r = pool.request(self.command, target + self.path, body=body, headers=headers, redirect=False)
                outer.forwarded.append(f"{self.command} {self.path}")
                if self.command == "POST" and self.path.endswith("/trace") and outer.drop > 0:
                    outer.drop -= 1
                    self.close_connection = True  # central committed; its answer never reaches the reporter
                    return
                self.send_response(r.status)
                for k in ("Content-Type", "Content-Length"):
                    if r.headers.get(k):
                        self.send_header(k, r.headers[k])
                self.end_headers()
                self.wfile.write(r.data)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def dropper(world) -> Iterator:
    made: List[AnswerDropper] = []

    def make(drop: int) -> AnswerDropper:
        made.append(AnswerDropper(world.url, drop))
        return made[-1]

    yield make
    for d in made:
        d.close()


def test_the_client_repeats_a_keyed_append_whose_answer_was_lost(world, dropper):
    jid, jc = matched(world)
    proxy = dropper(drop=1)
    c = CentralClient(proxy.url, jc.token, retries=2, backoff=0.01)
    assert c.append_trace(jid, [{"category": "trace", "text": "staged in", "key": "0.k.1"}]) == 1
    assert len([f for f in proxy.forwarded if f.endswith("/trace")]) == 2, "sent again after the lost answer"
    assert lines(world, jid) == [("0.k.1", "staged in")]
    # Without keys a repeat could duplicate the line: the client does not send it again, it says so.
    proxy.drop = 1
    with pytest.raises(CentralUnreachable, match="not safe to repeat"):
        c.append_trace(jid, [{"category": "trace", "text": "unkeyed"}])
    assert [t for _, t in lines(world, jid)] == ["staged in", "unkeyed"]


def test_the_agents_outbox_sends_a_lost_append_again_and_central_keeps_it_once(world, dropper):
    """The agent's reports go through an Outbox on a client that does not retry by itself (the outbox does, with
    backoff); every line the outbox made reaches the trace once, the one whose answer was lost too."""
    jid, jc = matched(world)
    proxy = dropper(drop=2)
    c = CentralClient(proxy.url, jc.token, retries=0)

    def send(r: Report) -> None:
        if r.kind == "trace":
            c.append_trace(jid, r.body["entries"])

    box = Outbox(send, key_prefix="0.f00d.", name=f"job {jid}")
    for i in range(5):
        box.trace("trace", f"line {i}")
    assert box.flush() is False, "the answer was lost: the batch stays queued"
    box.trace("trace", "line 5")
    assert box.drain(timeout_s=30, sleep=lambda s: None)
    got = lines(world, jid)
    # The outage line the outbox adds once central answers again is one of its keyed lines too.
    assert sorted(t for _, t in got if not t.startswith("errorConnecting")) == [f"line {i}" for i in range(6)]
    assert len([t for _, t in got if t.startswith("errorConnecting")]) == 1
    keys = [k for k, _ in got]
    assert len(keys) == len(set(keys)) == 7 and all(k.startswith("0.f00d.") for k in keys)
