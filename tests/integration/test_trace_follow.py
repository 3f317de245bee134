"""Following a trace as it grows (gridpilot/tracefollow.py), on SQLite and on a real PostgreSQL: a line that becomes
visible after a later-dated one was read (two requests in flight, committed out of order) is still returned, once."""

from __future__ import annotations

import pytest
from sqlalchemy import insert
from support.central import jdl, start_world

from gridpilot.central import schema
from gridpilot.tracefollow import OVERLAP_S, TraceCursor


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def add_line(world, job_id: int, ts: float, text: str) -> None:
    # Straight into the table with a chosen date: what a request that arrived at `ts` and committed now leaves.
    with world.db.write() as conn:
        conn.execute(insert(schema.traces).values(job_id=job_id, ts=ts, category="trace", text=text))


def texts(entries):
    return [e["text"] for e in entries if e["category"] == "trace"]


def test_a_line_committed_late_is_returned_once(world):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    cursor = TraceCursor(alice, jid)
    first = cursor.read()
    assert [e["category"] for e in first] == ["state"], "the submission's WAITING line"
    t2 = first[-1]["ts"] + 10
    add_line(world, jid, t2, "dated t2, seen first")
    assert texts(cursor.read()) == ["dated t2, seen first"]
    # Arrived before the line above (dated earlier), committed after it was read.
    add_line(world, jid, t2 - 5, "dated t1, committed late")
    assert texts(cursor.read()) == ["dated t1, committed late"]
    assert cursor.read() == [], "nothing twice"
    # Beyond the overlap a line is not looked for again (the window is bounded).
    add_line(world, jid, t2 - OVERLAP_S - 5, "older than the window")
    add_line(world, jid, t2 + 1, "next")
    assert texts(cursor.read()) == ["next"]


def test_every_line_has_its_row_id(world):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    add_line(world, jid, 1.0, "same text")
    add_line(world, jid, 1.0, "same text")
    ids = [e["id"] for e in alice.trace(jid)]
    assert len(ids) == len(set(ids)) == 3
