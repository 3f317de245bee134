"""How `gridpilot job ID` shows a kill reason: name, ALICE code and text, also from a central older than
`kill_reason_text` (the client then reads states.py), and a reason this client does not know as central named it."""

from __future__ import annotations

from gridpilot.console import _kill_reason_text
from gridpilot.states import KillReason


def test_the_kill_reason_line_uses_centrals_code_and_text() -> None:
    job = {"kill_reason": "SANDBOX_CREATE", "kill_reason_code": 201, "kill_reason_text": "central's words"}
    assert _kill_reason_text(job) == "SANDBOX_CREATE (201): central's words"


def test_an_older_central_without_the_text_gets_it_from_the_client() -> None:
    assert _kill_reason_text({"kill_reason": "INPUT_FILES"}) == KillReason.INPUT_FILES.describe()
    assert _kill_reason_text({"kill_reason": "INPUT_FILES"}).startswith("INPUT_FILES (202): Failed to get inputfiles")


def test_a_reason_the_client_does_not_know_is_shown_as_named() -> None:
    # A newer central's reason, or a code with no name (central shows it as its number).
    assert _kill_reason_text({"kill_reason": "SOMETHING_NEW"}) == "SOMETHING_NEW"
    assert _kill_reason_text({"kill_reason": "404"}) == "404"
