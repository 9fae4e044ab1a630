"""Error responses in TEI's shape: `{"error": message, "error_type": Type}`, never a stack trace."""

from __future__ import annotations

import json

from starlette.responses import Response


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def unauthorized(message: str) -> Response:
    return error_response(401, "Unauthorized", message, {"www-authenticate": "Bearer"})


def too_many(message: str, retry_after: str) -> Response:
    return error_response(429, "Overloaded", message, {"retry-after": retry_after})
