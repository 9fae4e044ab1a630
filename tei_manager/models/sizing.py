"""Exact sizes for any model, read from its own files instead of a hand-kept table.

Everything the VRAM model needs is in a checkout's small files:

* `config.json`: hidden size, layers, attention heads, positions, architecture (embedder or
  cross-encoder);
* `sentence_bert_config.json` / `1_Pooling/config.json`: the longest input and the pooling;
* the safetensors headers: every tensor's dtype and shape, so the exact parameter count. A header
  is the first 8 + N bytes of each weights file, so a source with ranged reads (the hub, a mirror)
  sizes a 2 GB model from a few hundred kilobytes.

`size_model()` is the pure part: file contents in, `ModelInfo` out. `LocalModelFiles` and
`HubModelFiles` fetch those contents from a directory or from a hub-compatible endpoint
(huggingface.co, an `HF_ENDPOINT`-style mirror).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Protocol

import httpx

from tei_manager.core.catalog import DEFAULT_HEAD_DIM, ModelInfo
from tei_manager.core.models import Pooling, Task
from tei_manager.errors import TeiManagerError

#: XLM-R-style models number positions after the padding index (as TEI and the worker count).
OFFSET_MODEL_TYPES = ("xlm-roberta", "camembert", "roberta")
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each safetensors dtype.
DTYPE_SIZES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
               "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


class SizingError(TeiManagerError):
    """A model's files do not say what the planner needs."""


class ModelFiles(Protocol):
    """Read access to one model checkout, wherever it lives."""

    where: str

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The parsed file, or None when the checkout has no such file."""

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """`length` bytes of `name` from `start` (fewer at the end of the file)."""


# ---- the pure part ------------------------------------------------------------------------------
def parse_header_length(first8: bytes, where: str) -> int:
    if len(first8) != 8:
        raise SizingError("is not a safetensors file (shorter than 8 bytes)", where=where)
    (length,) = struct.unpack("<Q", first8)
    if not 0 < length <= MAX_HEADER_BYTES:
        raise SizingError(f"is not a safetensors file (header length {length})", where=where)
    return int(length)


def count_parameters(header: dict[str, Any], where: str) -> tuple[int, dict[str, int]]:
    """Parameters in one safetensors header, and how many of them per dtype."""
    total, by_dtype = 0, dict[str, int]()
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            count = math.prod(int(d) for d in tensor["shape"])
            dtype = str(tensor["dtype"])
        except (KeyError, TypeError, ValueError):
            raise SizingError(f"tensor {name!r} has no valid shape/dtype in the header", where=where) from None
        total += count
        by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    return total, by_dtype


def max_input_length(config: dict[str, Any], st_config: dict[str, Any] | None) -> int:
    """TEI's rule: max_position_embeddings (less the XLM-R offset), capped by max_seq_length."""
    positions = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    if config.get("model_type") in OFFSET_MODEL_TYPES:
        positions -= int(config.get("pad_token_id", 1) or 0) + 1
    if st_config and st_config.get("max_seq_length"):
        return min(int(st_config["max_seq_length"]), positions)
    return positions


def pooling(pooling_config: dict[str, Any] | None) -> Pooling | None:
    if not pooling_config:
        return None
    for key, value in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                       ("pooling_mode_lasttoken", "last-token")):
        if pooling_config.get(key):
            return value  # type: ignore[return-value]
    return None


def task_of(config: dict[str, Any], where: str) -> Task:
    """A one-label sequence classifier is a reranker (as TEI decides); an encoder embeds."""
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return "embed"
    if len(config.get("id2label") or {"0": "LABEL_0"}) == 1:
        return "rerank"
    raise SizingError(f"is a classifier with {len(config['id2label'])} labels; tei-manager serves embedders and "
                      "one-label rerankers", where=where)


def size_model(hub_id: str, config: dict[str, Any], *, st_config: dict[str, Any] | None,
               pooling_config: dict[str, Any] | None, parameters: int, where: str) -> ModelInfo:
    """The planner's facts about a model from its files' contents (pure)."""
    text = config.get("text_config")
    arch = text if isinstance(text, dict) and "hidden_size" not in config else config
    try:
        hidden = int(arch.get("hidden_size") or arch["d_model"])
        layers = int(arch.get("num_hidden_layers") or arch["num_layers"])
    except (KeyError, TypeError, ValueError):
        raise SizingError("config.json has no hidden_size / num_hidden_layers", where=where,
                          fix="give hidden_size and num_layers on the model in the profile") from None
    heads = int(arch.get("num_attention_heads") or max(1, hidden // DEFAULT_HEAD_DIM))
    return ModelInfo(hub_id=hub_id, task=task_of(config, where), params_millions=parameters / 1e6,
                     hidden_size=hidden, num_layers=layers, num_heads=heads,
                     max_input_length=max_input_length(arch, st_config), default_pooling=pooling(pooling_config))


# ---- reading the files --------------------------------------------------------------------------
def weight_files(files: ModelFiles) -> list[str]:
    index = files.read_json(SHARD_INDEX)
    if index is not None:
        return sorted({str(f) for f in (index.get("weight_map") or {}).values()})
    return [SINGLE_WEIGHTS]


def read_header(files: ModelFiles, name: str) -> dict[str, Any]:
    where = f"{files.where}/{name}"
    length = parse_header_length(files.read_range(name, 0, 8), where)
    raw = files.read_range(name, 8, length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise SizingError("has a safetensors header that is not JSON", where=where) from None
    if not isinstance(header, dict):
        raise SizingError("has a safetensors header that is not a JSON object", where=where)
    return header


def size_from_files(hub_id: str, files: ModelFiles) -> ModelInfo:
    """Read config, sentence-transformers files and weight headers; size the model."""
    config = files.read_json("config.json")
    if config is None:
        raise SizingError("has no config.json", where=files.where,
                          fix="check the model id / path and revision, or describe the model in the profile")
    parameters = 0
    for name in weight_files(files):
        count, _ = count_parameters(read_header(files, name), f"{files.where}/{name}")
        parameters += count
    return size_model(hub_id, config, st_config=files.read_json("sentence_bert_config.json"),
                      pooling_config=files.read_json("1_Pooling/config.json"), parameters=parameters,
                      where=files.where)


class LocalModelFiles:
    """A checkout on disk (a profile's `path`, or a snapshot in the cache)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.where = str(directory)

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.directory / name
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SizingError(f"cannot read {name}: {exc}", where=self.where) from None
        return value if isinstance(value, dict) else None

    def read_range(self, name: str, start: int, length: int) -> bytes:
        path = self.directory / name
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError:
            raise SizingError(f"has no {name}", where=self.where,
                              fix="fallback and TEI need safetensors weights; convert the model or give its numbers "
                                  "in the profile") from None


class HubModelFiles:
    """A repository on a hub-compatible endpoint, read with HTTP range requests.

    `endpoint` is huggingface.co or a mirror with the same file API (`HF_ENDPOINT`); files are
    fetched from `{endpoint}/{repo}/resolve/{revision}/{name}`.
    """

    def __init__(self, endpoint: str, repo_id: str, *, revision: str | None = None, token: str | None = None,
                 client: httpx.Client | None = None, timeout_s: float = 20.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.where = f"{self.endpoint}/{repo_id}@{self.revision}"
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=True)

    def url(self, name: str) -> str:
        """Where `name` is served (a subclass speaks another file API)."""
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.revision}/{name}"

    def _get(self, name: str, headers: dict[str, str]) -> httpx.Response | None:
        try:
            response = self._client.get(self.url(name), headers={**self._headers, **headers})
        except httpx.HTTPError as exc:
            raise SizingError(f"cannot reach the model hub for {name}: {exc}", where=self.where,
                              fix="check the mirror URL and the network, or use a local path") from None
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise SizingError(f"the hub refused {name} ({response.status_code})", where=self.where,
                              fix="a gated or private model needs a token (HF_TOKEN)")
        if response.status_code >= 400:
            raise SizingError(f"the hub answered {response.status_code} for {name}", where=self.where)
        return response

    def read_json(self, name: str) -> dict[str, Any] | None:
        response = self._get(name, {})
        if response is None:
            return None
        try:
            value = response.json()
        except ValueError:
            raise SizingError(f"{name} is not JSON", where=self.where) from None
        return value if isinstance(value, dict) else None

    def read_range(self, name: str, start: int, length: int) -> bytes:
        response = self._get(name, {"range": f"bytes={start}-{start + length - 1}"})
        if response is None:
            raise SizingError(
                f"has no {name}",
                where=self.where,
                fix="fallback and TEI need safetensors weights, or give the model's numbers in the profile",
            )
        if response.status_code == 206:
            return response.content
        return response.content[start : start + length]  # a server without ranges sent the whole file
