"""Central's access log: one INFO line per HTTP request on the `gridpilot.central.access` logger, in place of
uvicorn's own (which serve.py keeps off):

    POST /api/v1/match agent pilot/CE1-12-3 204 3.1 ms

method, path (never the query string), the caller's role and token subject ("-" when the request carried no token
that central accepted), status, milliseconds. Never a header: the bearer token must not reach a log file.
A field with spaces or unusual characters is written as a JSON string, so that no value can forge a line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Awaitable, Callable, Dict, MutableMapping, Optional

log = logging.getLogger("gridpilot.central.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the route leaves the caller for the access log: the request's state (scope["state"]).
_PRINCIPAL = "gridpilot_principal"
_PLAIN = re.compile(r"[!-~]{1,512}")


def note_principal(scope: Scope, principal: Any) -> None:
    """Called by a route once it knows who the caller is (an auth.Principal, or None)."""
    state = scope.setdefault("state", {})
    state[_PRINCIPAL] = principal


def field(value: Optional[str]) -> str:
    if not value:
        return "-"
    return value if _PLAIN.fullmatch(value) and value != "-" else json.dumps(value[:512])


class AccessLog:
    """ASGI middleware that logs each HTTP request when its answer has gone (or failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state: Dict[str, Any] = scope.setdefault("state", {})
        status = 500  # what the client gets when the app fails before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if log.isEnabledFor(logging.INFO):
                p = state.get(_PRINCIPAL)
                role, subject = (p.role, p.subject) if p is not None else (None, None)
                log.info("%s %s %s %s %d %.1f ms", field(scope.get("method")), field(scope.get("path")), field(role),
                         field(subject), status, (time.perf_counter() - t0) * 1000)


__all__ = ["AccessLog", "note_principal"]
