"""Reading a request body safely: JSON only, size-capped while it streams, time-capped.

* `Content-Type` must be JSON (TEI answers anything else with 415).
* The size cap holds for chunked uploads too: reading stops at the first byte past the limit
  (413), so a client cannot make the gateway buffer more than the limit.
* A body that trickles in slower than BODY_TIMEOUT_S for the whole of it is cut off with 408,
  so slow clients cannot hold a connection and its buffer forever.
* orjson parses: invalid UTF-8, lone surrogates (`"\\ud800"`) and nesting deeper than 1,024
  are syntax errors (400), like TEI's serde_json, instead of surprises further down.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request

from tei_manager.gateway.errors import (
    InvalidBody,
    PayloadTooLarge,
    RequestRefused,
    UnsupportedMediaType,
)

MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 30.0


class BodyTimedOut(RequestRefused):
    status, error_type, reason = 408, "Validation", "bad_request"


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int = MAX_BODY_BYTES, timeout_s: float | None = None) -> bytes:
    timeout_s = BODY_TIMEOUT_S if timeout_s is None else timeout_s
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimedOut(f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def read_json(request: Request) -> tuple[bytes, Any]:
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "Expected request with `Content-Type: application/json`"
        )
    raw = await read_body(request)
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"the body is not valid JSON: {exc}", status=400) from None
