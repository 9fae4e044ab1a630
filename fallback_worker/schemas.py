"""Request bodies: JSON decoding and shape checks with TEI's (axum's) status codes and wording.

A body that is not JSON is 400, JSON of the wrong shape is 422, both in plain text. Unknown
fields are ignored, as serde does by default. Checks on values (empty inputs, batch size,
dimensions) belong to the handlers, because TEI reports those as JSON errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BodyError
from .tokenization import TextInput

T = TypeVar("T")
U32_MAX = 2**32 - 1


# serde_json's nesting limit (TEI parses bodies with it): deeper JSON is a syntax error, 400.
MAX_DEPTH = 128


def decode_json(body: bytes) -> Any:
    """JSON as serde_json (TEI) accepts it; anything else is axum's plain-text 400.

    Python's json is more lenient than serde_json in two ways that reach the model and fail
    there: it accepts lone surrogates ("\\ud800", which no UTF-8 text can hold) and nesting as deep
    as the interpreter's recursion limit (RecursionError past it). Both are refused here, with
    serde_json's wording, before any handler sees the body.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(400, f"Failed to parse the request body as JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    _check_values(data)
    return data


def _too_deep() -> BodyError:
    return BodyError(400, f"Failed to parse the request body as JSON: recursion limit exceeded (depth > {MAX_DEPTH})")


def _check_values(data: Any) -> None:
    """Depth and text checks over the decoded value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if not isinstance(value, (list, dict)):
            continue
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in value if isinstance(item, (str, list, dict)))


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(
            400, "Failed to parse the request body as JSON: lone surrogate in a \\u escape (not valid Unicode text)"
        ) from None


def _show(value: Any) -> str:
    """A value for an error message, cut short: a hostile body must not be echoed back whole."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shape(message: str) -> BodyError:
    return BodyError(422, f"Failed to deserialize the JSON body into the target type: {message}")


def _obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _shape(f"invalid type: {type(data).__name__}, expected a JSON object")
    return data


def _field(data: dict[str, Any], name: str, check: Callable[[Any, str], T], default: T) -> T:
    value = data.get(name)
    if value is None:
        return default
    return check(value, name)


def _required(data: dict[str, Any], name: str, check: Callable[[Any, str], T]) -> T:
    if name not in data:
        raise _shape(f"missing field `{name}`")
    return check(data[name], name)


def as_bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise _shape(f"{name}: invalid type: {_show(v)}, expected a boolean")
    return v


def as_str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise _shape(f"{name}: invalid type: {_show(v)}, expected a string")
    return v


def as_u32(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= U32_MAX:
        raise _shape(f"{name}: invalid value: {_show(v)}, expected u32")
    return v


def as_ids(v: Any, name: str) -> list[int]:
    if not isinstance(v, list):
        raise _shape(f"{name}: expected a sequence of token ids")
    return [as_u32(x, name) for x in v]


def as_list(v: Any, name: str) -> list[Any]:
    if not isinstance(v, list):
        raise _shape(f"{name}: invalid type: {_show(v)}, expected a sequence")
    return v


def as_direction(v: Any, name: str) -> str:
    if v in ("Right", "right"):
        return "right"
    if v in ("Left", "left"):
        return "left"
    raise _shape(f"{name}: unknown variant `{_show(v)}`, expected `Right` or `Left`")


def as_inputs(v: Any, name: str) -> tuple[list[TextInput], bool]:
    """TEI's untagged `Input`: a string, ids, or a list of those. Returns (inputs, is_batch)."""
    if isinstance(v, str):
        return [v], False
    if isinstance(v, list):
        if v and all(type(x) is int for x in v):
            return [as_ids(v, name)], False
        items: list[TextInput] = []
        for x in v:
            if isinstance(x, str):
                items.append(x)
            elif isinstance(x, list):
                items.append(as_ids(x, name))
            else:
                raise _shape(f"{name}: data did not match any variant of untagged enum Input")
        return items, True
    raise _shape(f"{name}: data did not match any variant of untagged enum Input")


@dataclass
class EmbedRequest:
    inputs: list[TextInput]
    batch: bool
    truncate: bool | None
    direction: str
    prompt_name: str | None
    normalize: bool = True
    dimensions: int | None = None


def parse_embed(data: Any, *, openai: bool = False) -> EmbedRequest:
    d = _obj(data)
    if openai:
        inputs, batch = _required(d, "input", as_inputs)
        fmt = _field(d, "encoding_format", as_str, "float")
        if fmt not in ("float", "base64"):
            raise _shape(f"encoding_format: unknown variant `{_show(fmt)}`, expected `float` or `base64`")
        req = EmbedRequest(inputs, batch, None, "right", None, True, _field(d, "dimensions", as_u32, None))
        req.encoding_format = fmt  # type: ignore[attr-defined]
        req.model = _field(d, "model", as_str, None)  # type: ignore[attr-defined]
        return req
    inputs, batch = _required(d, "inputs", as_inputs)
    return EmbedRequest(
        inputs,
        batch,
        _field(d, "truncate", as_bool, None),
        _field(d, "truncation_direction", as_direction, "right"),
        _field(d, "prompt_name", as_str, None),
        _field(d, "normalize", as_bool, True),
        _field(d, "dimensions", as_u32, None),
    )


@dataclass
class RerankRequest:
    query: str
    texts: list[str]
    truncate: bool | None
    direction: str
    raw_scores: bool
    return_text: bool


def parse_rerank(data: Any) -> RerankRequest:
    d = _obj(data)
    texts = _required(d, "texts", as_list)
    return RerankRequest(
        _required(d, "query", as_str),
        [as_str(t, "texts") for t in texts],
        _field(d, "truncate", as_bool, None),
        _field(d, "truncation_direction", as_direction, "right"),
        _field(d, "raw_scores", as_bool, False),
        _field(d, "return_text", as_bool, False),
    )


@dataclass
class PredictRequest:
    inputs: list[TextInput]
    batch: bool
    truncate: bool | None
    direction: str
    raw_scores: bool


def _predict_item(v: Any) -> TextInput:
    if isinstance(v, list) and len(v) in (1, 2) and all(isinstance(x, str) for x in v):
        return v[0] if len(v) == 1 else (v[0], v[1])
    raise _shape("inputs: data did not match any variant of untagged enum PredictInput")


def parse_predict(data: Any) -> PredictRequest:
    d = _obj(data)
    raw = _required(d, "inputs", lambda v, n: v)
    inputs: list[TextInput]
    batch: bool
    if isinstance(raw, str):
        inputs, batch = [raw], False
    elif isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw):
        inputs, batch = [(raw[0], raw[1])], False
    elif isinstance(raw, list) and all(isinstance(x, list) for x in raw):
        inputs, batch = [_predict_item(x) for x in raw], True
    else:
        raise _shape("inputs: data did not match any variant of untagged enum PredictInput")
    return PredictRequest(
        inputs,
        batch,
        _field(d, "truncate", as_bool, None),
        _field(d, "truncation_direction", as_direction, "right"),
        _field(d, "raw_scores", as_bool, False),
    )


@dataclass
class SimilarityRequest:
    source: str
    sentences: list[str]
    truncate: bool | None
    direction: str
    prompt_name: str | None


def parse_similarity(data: Any) -> SimilarityRequest:
    d = _obj(data)
    inputs = _obj(_required(d, "inputs", lambda v, n: v))
    sentences = _required(inputs, "sentences", as_list)
    params = _obj(d.get("parameters") or {})
    return SimilarityRequest(
        _required(inputs, "source_sentence", as_str),
        [as_str(s, "inputs.sentences") for s in sentences],
        _field(params, "truncate", as_bool, None),
        _field(params, "truncation_direction", as_direction, "right"),
        _field(params, "prompt_name", as_str, None),
    )


@dataclass
class TokenizeRequest:
    inputs: list[str]
    add_special_tokens: bool
    prompt_name: str | None


def parse_tokenize(data: Any) -> TokenizeRequest:
    d = _obj(data)
    raw = _required(d, "inputs", lambda v, n: v)
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list):
        inputs = [as_str(x, "inputs") for x in raw]
    else:
        raise _shape("inputs: data did not match any variant of untagged enum TokenizeInput")
    return TokenizeRequest(
        inputs, _field(d, "add_special_tokens", as_bool, True), _field(d, "prompt_name", as_str, None)
    )


@dataclass
class DecodeRequest:
    ids: list[list[int]]
    skip_special_tokens: bool


def parse_decode(data: Any) -> DecodeRequest:
    d = _obj(data)
    raw = _required(d, "ids", lambda v, n: v)
    if not isinstance(raw, list):
        raise _shape("ids: data did not match any variant of untagged enum InputIds")
    if raw and all(isinstance(x, list) for x in raw):
        ids = [as_ids(x, "ids") for x in raw]
    else:
        ids = [as_ids(raw, "ids")]
    return DecodeRequest(ids, _field(d, "skip_special_tokens", as_bool, True))
