"""The one error type the service's operations raise: an HTTP status, a stable code and a message for people.

app.py turns it into `{"error": {"code": ..., "message": ..., **extra}}`. Codes are part of the API: clients
branch on them (client.CentralError.code), so they are never renamed.
"""

from __future__ import annotations

from typing import Any, Dict


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def bad_request(message: str, code: str = "bad_request", **extra: Any) -> ApiError:
    return ApiError(400, code, message, **extra)


def unauthenticated(message: str, code: str = "unauthenticated") -> ApiError:
    return ApiError(401, code, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


def conflict(message: str, code: str = "conflict", **extra: Any) -> ApiError:
    return ApiError(409, code, message, **extra)
