"""The worker's settings: text-embeddings-router's flags (and their env vars) plus our own few."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_openvino_cache() -> Path:
    """$XDG_CACHE_HOME/tei-manager/openvino (~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tei-manager" / "openvino"


@dataclass
class WorkerConfig:
    model_id: str
    revision: str | None = None
    dtype: str | None = None
    pooling: str | None = None
    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    max_client_batch_size: int = 32
    auto_truncate: bool = True
    default_prompt_name: str | None = None
    default_prompt: str | None = None
    hf_token: str | None = None
    hostname: str = "0.0.0.0"
    port: int = 3000
    served_model_name: str | None = None
    huggingface_hub_cache: str | None = None
    payload_limit: int = 2_000_000
    api_key: str | None = None
    json_output: bool = False
    tokenization_workers: int | None = None
    cors_allow_origin: list[str] | None = None
    # Beyond TEI:
    rerank_mode: str = "cross-encoder"  # or "bi-encoder": /rerank by cosine on an embedding model
    device: str | None = None
    forward_workers: int | None = None  # threads running forward passes at once; None: 2 on CPU, 1 on CUDA
    unpadded: bool = True  # packed batches for BERT-family models (packed.py); False: padded through transformers
    engine: str = "auto"  # what runs the model: auto | torch | openvino (loading.py)
    openvino_cache_dir: str | None = None  # converted models and compiled blobs; None: not cached
    header_read_timeout: float = 10.0  # seconds for a request's line and headers (slow clients: 408, closed)
    body_read_timeout: float = 30.0  # seconds for its body once the headers are in

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_id
