"""What the gateway answers when it cannot serve a request: one class per kind of refusal.

Every class is a `tei_manager.errors.GatewayError` carrying the HTTP status and TEI's
`error_type`, and renders as TEI's error body `{"error": message, "error_type": Type}`, never a
stack trace.  `reason` is the metrics label of a refusal (`tei_manager_gateway_rejections_total`).

    GatewayError (tei_manager.errors)
    └── RequestRefused            base of every per-request refusal below
        ├── Unauthorized          401  no or unknown API key
        ├── Forbidden             403  the key may not use that model
        ├── ModelNotFound         404  no such model here
        ├── NotFound              404  no such path
        ├── MethodNotAllowed      405  (carries `Allow`)
        ├── PayloadTooLarge       413  body or input count over the limit
        ├── UnsupportedMediaType  415  not application/json
        ├── InvalidBody           422  (400 for unparsable JSON) the body cannot be used
        ├── Overloaded            429  rate, token budget or queue wait ran out (carries Retry-After)
        ├── BadUpstream           502  an instance answered something unusable
        ├── Unhealthy             503  no healthy instance
        └── UpstreamTimedOut      504  no answer in time
"""

from __future__ import annotations

import json
import math

from starlette.responses import Response

from tei_manager.errors import GatewayError


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class RequestRefused(GatewayError):
    """One request the gateway answers with an error instead of an upstream answer."""

    status = 500
    error_type = "Backend"
    reason = "error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, reason: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status

    def response(self) -> Response:
        return error_response(self.status, self.error_type, self.message, self.headers or None)


class Unauthorized(RequestRefused):
    status, error_type, reason = 401, "Unauthorized", "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"www-authenticate": "Bearer"})


class Forbidden(RequestRefused):
    status, error_type, reason = 403, "Forbidden", "forbidden"


class ModelNotFound(RequestRefused):
    status, error_type, reason = 404, "ModelNotFound", "unknown_model"


class NotFound(RequestRefused):
    status, error_type, reason = 404, "NotFound", "not_found"


class MethodNotAllowed(RequestRefused):
    status, error_type, reason = 405, "Validation", "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message, headers={"allow": allow})


class PayloadTooLarge(RequestRefused):
    status, error_type, reason = 413, "Validation", "too_large"


class UnsupportedMediaType(RequestRefused):
    status, error_type, reason = 415, "Validation", "bad_request"


class InvalidBody(RequestRefused):
    status, error_type, reason = 422, "Validation", "bad_request"


class Overloaded(RequestRefused):
    status, error_type, reason = 429, "Overloaded", "no_capacity"

    def __init__(self, message: str, *, retry_after_s: float, reason: str) -> None:
        # Whole seconds (RFC 9110 delay-seconds); at least 1 so clients never spin.
        super().__init__(message, headers={"retry-after": str(max(1, math.ceil(retry_after_s)))}, reason=reason)


class BadUpstream(RequestRefused):
    status, error_type, reason = 502, "Backend", "bad_upstream"


class Unhealthy(RequestRefused):
    status, error_type, reason = 503, "Unhealthy", "unhealthy"


class UpstreamTimedOut(RequestRefused):
    status, error_type, reason = 504, "Backend", "timeout"
