"""A request's body read whole, but never more than a limit: the API's JSON bodies (app.py) and the web view's forms
(ui/session.py). A declared Content-Length over the limit is refused before reading; a body that grows past it while
streaming (chunked, or lying about its length) is refused as soon as it does, so a client cannot make central buffer
more than the limit."""

from __future__ import annotations

from typing import List

from starlette.requests import Request

from gridpilot.central.problems import ApiError


async def read_capped(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body; 413 body_too_large naming `what` and the limit beyond it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"{what} of {declared} bytes is over the limit of {limit}")
    chunks: List[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = ["read_capped"]
