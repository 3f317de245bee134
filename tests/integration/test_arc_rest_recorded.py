"""The recorded A-REX answers that tests/unit/test_arc_rest_answers.py replays (tests/fixtures/arc/) are still
what a real A-REX answers: each exchange is recorded afresh from `arex_server` and compared with the stored one by
status, content type and the shape of its JSON (keys and types; ids and reasons differ from run to run). With
GRIDPILOT_ARC_RECORD=1 the fresh recordings replace the stored ones instead."""

from __future__ import annotations

import json
import os

from support.arcrecord import ARC_FIXTURES, RECORD_ENV, load, record, save, shape


def test_the_stored_recordings_match_what_a_rest_answers_now(arex_server):
    fresh = record(arex_server)
    if os.environ.get(RECORD_ENV) == "1":
        save(fresh)
    stored = {p.stem for p in ARC_FIXTURES.glob("*.json")}
    assert stored == set(fresh), f"stored {sorted(stored)} vs recorded {sorted(fresh)}"
    for name, now in fresh.items():
        then = load(name)
        assert (then["method"], then["path"], then["status"]) == (now["method"], now["path"], now["status"]), name
        assert then["content_type"] == now["content_type"], name
        if now["content_type"].startswith("application/json") and now["body"]:
            assert shape(json.loads(then["body"])) == shape(json.loads(now["body"])), (name, then["body"],
                                                                                         now["body"])
        elif name.startswith("diagnose_status") or name.startswith("session_get"):
            assert then["body"] == now["body"], name
