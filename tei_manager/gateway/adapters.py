"""Request/response shapes the gateway speaks besides TEI's own.  Pure.

* `/v1/rerank` (Cohere / Jina): `{model, query, documents, top_n, return_documents}` ->
  TEI `/rerank` `{query, texts}`; TEI's `[{index, score}]` (sorted by score) ->
  `{id, model, results: [{index, relevance_score, document?: {text}}], usage, meta}`.
* `/v1/embeddings` (OpenAI) is TEI-native and passes through unchanged.

Also the token *estimate* used to reserve a tenant's tokens/min budget before a request runs
(reconciled with the upstream's count afterwards, see qos.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from tei_manager.gateway.errors import BadUpstream, InvalidBody

# Roughly 4 bytes of text per token for the WordPiece/SentencePiece vocabularies of the models
# served here, plus the special tokens around each sequence.  Only a reservation: the real
# count from `x-compute-tokens` replaces it.
BYTES_PER_TOKEN = 4
SPECIAL_TOKENS = 2


class BodyError(InvalidBody):
    """A request body the gateway cannot use (TEI answers such bodies with 422)."""

    def __init__(self, message: str, status: int = 422, error_type: str = "Validation") -> None:
        super().__init__(message, status=status)
        self.error_type = error_type


def _text_tokens(text: str) -> int:
    return len(text.encode("utf-8")) // BYTES_PER_TOKEN + SPECIAL_TOKENS


def _one_input_tokens(value: Any) -> int:
    if isinstance(value, str):
        return _text_tokens(value)
    if isinstance(value, list):
        return len(value)  # one input given as token ids
    return 0


def _input_tokens(value: Any) -> int:
    # Two levels at most (a list of texts or of token-id lists): deeper bodies are invalid and the
    # runtime refuses them; walking them here would only risk a RecursionError.
    if isinstance(value, list) and not all(isinstance(v, int) for v in value):
        return sum(_one_input_tokens(v) for v in value)
    return _one_input_tokens(value)


def estimate_tokens(task: str, body: Any) -> int:
    """Tokens a request will probably cost; at least 1."""
    if not isinstance(body, dict):
        return 1
    if task == "rerank":
        raw_query = body.get("query")
        query = raw_query if isinstance(raw_query, str) else ""
        texts = body.get("texts", body.get("documents")) or []
        if not isinstance(texts, list):
            return 1
        per_query = _text_tokens(query)
        return max(1, sum(per_query + _input_tokens(_doc_text(t) or "") for t in texts))
    return max(1, _input_tokens(body.get("inputs", body.get("input"))))


def _doc_text(doc: Any) -> str | None:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        text: str = doc["text"]
        return text
    return None


def cohere_to_tei(body: Any) -> tuple[dict[str, Any], list[str], int | None, bool]:
    """(TEI /rerank body, the document texts, top_n, return_documents) from a Cohere/Jina body."""
    if not isinstance(body, dict):
        raise BodyError("the body must be a JSON object")
    query = body.get("query")
    if not isinstance(query, str):
        raise BodyError("`query` must be a string")
    documents = body.get("documents")
    if not isinstance(documents, list):
        raise BodyError("`documents` must be a list of strings or of {\"text\": ...} objects")
    texts = []
    for i, doc in enumerate(documents):
        text = _doc_text(doc)
        if text is None:
            raise BodyError(f"documents[{i}] must be a string or an object with a `text` string")
        texts.append(text)
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise BodyError("`top_n` must be a positive integer")
    return_documents = bool(body.get("return_documents", False))
    tei: dict[str, Any] = {"query": query, "texts": texts, "raw_scores": False, "return_text": False}
    if "truncate" in body:
        tei["truncate"] = body["truncate"]
    return tei, texts, top_n, return_documents


def tei_to_cohere(
    tei_body: bytes, texts: list[str], top_n: int | None, return_documents: bool, model: str, tokens: int | None
) -> dict[str, Any]:
    ranked = json.loads(tei_body)
    if not isinstance(ranked, list):
        raise BadUpstream("the upstream answered /rerank with something other than a list")
    ranked = sorted(ranked, key=lambda r: r["score"], reverse=True)  # TEI sorts already; be sure
    if top_n is not None:
        ranked = ranked[:top_n]
    results = []
    for item in ranked:
        result: dict[str, Any] = {"index": item["index"], "relevance_score": item["score"]}
        if return_documents:
            result["document"] = {"text": texts[item["index"]]}
        results.append(result)
    answer: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "model": model,
        "results": results,
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    }
    if tokens is not None:
        answer["usage"] = {"total_tokens": tokens}
    return answer


# ---- splitting calls larger than an instance's max_client_batch_size ---------------------------
# OpenAI- and Cohere-style clients batch freely (LangChain's OpenAIEmbeddings sends up to 1000
# inputs, rerank calls often carry 50-100 documents), while TEI refuses more than
# `max_client_batch_size` inputs per request.  The gateway splits such calls (on TEI's own
# /embed, /embed_all, /embed_sparse and /rerank too) into chunks, sends them as admission lets
# them through (see dispatch.py) and merges the answers, so the client sees one response.

# Where each route keeps its inputs, and how chunk answers become one answer.
INPUT_FIELDS = {"/embed": "inputs", "/embed_all": "inputs", "/embed_sparse": "inputs",
                "/v1/embeddings": "input", "/rerank": "texts", "/tokenize": "inputs"}


def input_count(value: Any) -> int:
    """Inputs in a TEI/OpenAI `inputs` value: a string or one list of token ids is one input."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def _permits(upstream_path: str, inputs: int) -> int:
    # A bi-encoder reranker (the fallback worker's rerank_mode) embeds the query too: n texts take
    # n + 1 permits.  The one spare permit a cross-encoder does not use costs nothing.
    return inputs + 1 if upstream_path == "/rerank" else inputs


def count_inputs(upstream_path: str, body: Any) -> int:
    """Inputs one upstream call carries; at least 1.  Refuses (422) inputs of a shape TEI does not
    take (a string, a list of strings, token ids or lists of token ids), such as deep nesting."""
    field = INPUT_FIELDS.get(upstream_path)
    if field is None or not isinstance(body, dict):
        return 1
    value = body.get(field)
    if isinstance(value, list) and not all(isinstance(v, int) for v in value):
        for i, item in enumerate(value):
            if not isinstance(item, str) and not (isinstance(item, list) and all(isinstance(v, int) for v in item)):
                raise BodyError(f"`{field}[{i}]` must be a string or a list of token ids")
    return input_count(value)


def count_permits(upstream_path: str, body: Any) -> int:
    """Admission permits one upstream call takes in the runtime (the unit it admits in)."""
    return _permits(upstream_path, count_inputs(upstream_path, body))


def split_inputs(upstream_path: str, body: Any, size: int) -> list[tuple[bytes, int]] | None:
    """(body, permits) per chunk of at most `size` inputs, or None when the call fits as it is."""
    field = INPUT_FIELDS.get(upstream_path)
    if field is None or upstream_path == "/tokenize" or not isinstance(body, dict):
        return None
    inputs = body.get(field)
    if not isinstance(inputs, list) or input_count(inputs) <= size:
        return None
    count_inputs(upstream_path, body)  # the shape check
    return [
        (orjson.dumps({**body, field: chunk}), _permits(upstream_path, len(chunk))) for chunk in _chunks(inputs, size)
    ]


def merge_arrays(bodies: list[bytes], size: int) -> bytes:
    """TEI's /embed answers (one JSON array per chunk, in order) as one array; spliced, not re-parsed."""
    items = [b.strip()[1:-1].strip() for b in bodies]
    return b"[" + b",".join(i for i in items if i) + b"]"


def merger(upstream_path: str) -> Callable[[list[bytes], int], bytes]:
    """How to merge the chunk answers of a split call to `upstream_path`."""
    if upstream_path == "/v1/embeddings":
        return merge_openai
    if upstream_path == "/rerank":
        return merge_rerank
    return merge_arrays


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def split_openai(body: Any, size: int) -> list[bytes] | None:
    """Chunked /v1/embeddings bodies, or None when the body fits (or is not a list of inputs)."""
    if not isinstance(body, dict):
        return None
    inputs = body.get("input")
    if not isinstance(inputs, list) or len(inputs) <= size:
        return None
    if all(isinstance(v, int) for v in inputs):
        return None  # one input given as token ids
    return [json.dumps({**body, "input": chunk}).encode() for chunk in _chunks(inputs, size)]


def merge_openai(bodies: list[bytes], size: int) -> bytes:
    merged: dict[str, Any] | None = None
    data: list[Any] = []
    prompt = total = 0
    for n, raw in enumerate(bodies):
        part = json.loads(raw)
        merged = merged or part
        for item in part.get("data", []):
            data.append({**item, "index": item.get("index", 0) + n * size})
        usage = part.get("usage") or {}
        prompt += int(usage.get("prompt_tokens", 0))
        total += int(usage.get("total_tokens", 0))
    answer = dict(merged or {"object": "list"})
    answer["data"] = data
    answer["usage"] = {"prompt_tokens": prompt, "total_tokens": total}
    return json.dumps(answer).encode()


def split_rerank(tei_body: dict[str, Any], size: int) -> list[bytes] | None:
    """Chunked TEI /rerank bodies (same query, a slice of the texts each), or None when it fits."""
    texts = tei_body.get("texts")
    if not isinstance(texts, list) or len(texts) <= size:
        return None
    return [json.dumps({**tei_body, "texts": chunk}).encode() for chunk in _chunks(texts, size)]


def merge_rerank(bodies: list[bytes], size: int) -> bytes:
    ranked = []
    for n, raw in enumerate(bodies):
        for item in json.loads(raw):
            ranked.append({**item, "index": item["index"] + n * size})
    ranked.sort(key=lambda r: r["score"], reverse=True)
    return json.dumps(ranked).encode()
