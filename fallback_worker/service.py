"""The inference operations behind the routes: admission, tokenization, batching, post-processing.

Each operation takes parsed request values and returns plain Python results plus `Timings` for the
x-* headers and the metrics. HTTP concerns (bodies, status codes, headers) stay in server.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .batcher import Batcher, Permits
from .config import WorkerConfig
from .engine import BaseEngine, normalize_rows, sigmoid, softmax
from .errors import BackendError, EmptyError, OverloadedError, ValidationError
from .metrics import Metrics
from .tokenization import Encoded, TextInput


class ClientGone(Exception):
    """The client disconnected while its inputs waited; nothing is sent back."""


@dataclass
class Timings:
    start: float = field(default_factory=time.perf_counter)
    tokenization: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    tokens: int = 0
    characters: int = 0
    method: str = "batch"  # TEI's te_request_count label: "single" for one input, else "batch"

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


DisconnectWaiter = Callable[[], Awaitable[None]]
T = TypeVar("T")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Service:
    def __init__(
        self, engine: BaseEngine, config: WorkerConfig, metrics: Metrics, batcher: Batcher, workers: int
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.batcher = batcher
        self.permits = Permits(config.max_concurrent_requests)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize")
        # /tokenize and /decode run on their own threads: a client tokenizing long texts then
        # queues behind other such clients, never in front of /embed's tokenization (which is
        # on the path of every inference request). Their inputs also take admission permits.
        self.tools_executor = ThreadPoolExecutor(max_workers=max(1, workers // 2), thread_name_prefix="tokenize-api")
        self.spec = engine.spec
        self.default_prompt = config.default_prompt
        if config.default_prompt_name:
            self.default_prompt = self.spec.prompts[config.default_prompt_name]

    # ---- shared steps --------------------------------------------------------------------
    def check_count(self, n: int, what: str = "inputs", extra: int = 0) -> None:
        if n == 0:
            raise EmptyError(f"`{what}` cannot be empty")
        if n + extra > self.config.max_client_batch_size:
            raise ValidationError(
                f"batch size {n + extra} > maximum allowed batch size {self.config.max_client_batch_size}",
                prefix=False,
                metric="batch_size",
            )

    def prompt_for(self, prompt_name: str | None) -> str | None:
        if prompt_name is None:
            return self.default_prompt
        if prompt_name not in self.spec.prompts:
            known = ", ".join(self.spec.prompts) or "none"
            raise ValidationError(f"Default prompt `{prompt_name}` not found in the prompts: {known}")
        return self.spec.prompts[prompt_name]

    async def _tokenize(
        self, inputs: Sequence[TextInput], truncate: bool | None, direction: str, prompt: str | None, t: Timings
    ) -> list[Encoded]:
        truncate = self.config.auto_truncate if truncate is None else truncate
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(
            self.executor,
            lambda: self.engine.tokenizer.encode(inputs, truncate=truncate, direction=direction, prompt=prompt),
        )
        t.tokenization += time.perf_counter() - began
        for e in encoded:
            self.metrics.input_length.observe(len(e.ids))
            t.tokens += len(e.ids)
            t.characters += e.chars
        return encoded

    async def _run(
        self, task: str, encoded: list[Encoded], t: Timings, disconnected: DisconnectWaiter | None
    ) -> list[Any]:
        jobs = self.batcher.submit(task, encoded)
        results = asyncio.gather(*(j.future for j in jobs))
        if disconnected is None:
            out = await results
        else:
            watcher = asyncio.ensure_future(disconnected())
            try:
                racers: set[asyncio.Future[Any]] = {results, watcher}
                await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if not results.done():
                # The client left: its jobs are skipped when their batch comes up.
                for job in jobs:
                    job.cancelled = True
                results.cancel()
                # Python 3.11's gather ends a cancelled gather with a CancelledError *exception*;
                # unread, asyncio logs "exception was never retrieved" at error level on GC.
                results.add_done_callback(_retrieve)
                raise ClientGone()
            out = results.result()
        t.queue = max(j.started - j.enqueued for j in jobs)
        t.inference = max(j.inference_s for j in jobs)
        return out

    async def infer(
        self,
        task: str,
        inputs: Sequence[TextInput],
        truncate: bool | None,
        direction: str,
        t: Timings,
        disconnected: DisconnectWaiter | None,
        prompt: str | None = None,
    ) -> list[Any]:
        """Permits for every input (all or none, else 429), tokenize, batch, forward."""
        if not self.permits.try_acquire(len(inputs)):
            raise OverloadedError()
        try:
            encoded = await self._tokenize(inputs, truncate, direction, prompt, t)
            return await self._run(task, encoded, t, disconnected)
        finally:
            self.permits.release(len(inputs))

    def _require(self, kind: str, message: str) -> None:
        if self.spec.kind != kind:
            raise BackendError(message, metric="model_type")

    # ---- operations ----------------------------------------------------------------------
    async def embed(
        self,
        inputs: list[TextInput],
        *,
        truncate: bool | None,
        direction: str,
        prompt_name: str | None,
        normalize: bool,
        dimensions: int | None,
        t: Timings,
        disconnected: DisconnectWaiter | None = None,
    ) -> np.ndarray:
        self._require("embedding", "Model is not an embedding model")
        self.check_count(len(inputs))
        if dimensions is not None:
            if dimensions == 0:
                raise ValidationError("`dimensions` should be positive")
            if dimensions > self.spec.hidden_size:
                raise ValidationError("`dimensions` should be smaller than the maximum embedding dimension.")
        prompt = self.prompt_for(prompt_name)
        rows = await self.infer("embed", inputs, truncate, direction, t, disconnected, prompt)
        matrix = np.stack(rows).astype(np.float32, copy=False)
        if dimensions is not None:
            matrix = matrix[:, :dimensions]  # Matryoshka: truncate first, then normalize
        return normalize_rows(matrix) if normalize else matrix

    async def embed_all(
        self, inputs: list[TextInput], *, truncate: bool | None, direction: str, prompt_name: str | None,
        t: Timings, disconnected: DisconnectWaiter | None = None,
    ) -> list[np.ndarray]:
        self._require("embedding", "Model is not an embedding model")
        self.check_count(len(inputs))
        return await self.infer("all", inputs, truncate, direction, t, disconnected, self.prompt_for(prompt_name))

    async def embed_sparse(
        self, inputs: list[TextInput], *, truncate: bool | None, direction: str, prompt_name: str | None,
        t: Timings, disconnected: DisconnectWaiter | None = None,
    ) -> list[list[tuple[int, float]]]:
        if not self.spec.sparse:
            # TEI: "Model is not an embedding model with SPLADE pooling"; here the sparse head is bge-m3's.
            raise BackendError(
                "Model is not an embedding model with a sparse head (sparse_linear.pt)", metric="model_type"
            )
        self.check_count(len(inputs))
        return await self.infer("sparse", inputs, truncate, direction, t, disconnected, self.prompt_for(prompt_name))

    async def rerank(
        self, query: str, texts: list[str], *, truncate: bool | None, direction: str, raw_scores: bool,
        t: Timings, disconnected: DisconnectWaiter | None = None,
    ) -> list[float]:
        """Scores in the order of ``texts``."""
        bi_encoder = self.spec.kind == "embedding" and self.config.rerank_mode == "bi-encoder"
        if self.spec.kind != "reranker" and not bi_encoder:
            raise BackendError("model is not a re-ranker model", metric="model_type")
        self.check_count(len(texts), "texts")
        if bi_encoder:
            rows = await self.infer("embed", [query, *texts], truncate, direction, t, disconnected)
            unit = normalize_rows(np.stack(rows))
            # Cosine similarity in [-1, 1], whether or not raw_scores is set: there is no logit to expose.
            scores = unit[1:] @ unit[0]
        else:
            logits = await self.infer("classify", [(query, x) for x in texts], truncate, direction, t, disconnected)
            raw = np.array([row[0] for row in logits], dtype=np.float32)
            scores = raw if raw_scores else sigmoid(raw)
        values = [float(s) for s in scores]
        if any(np.isnan(values)):
            raise BackendError("score is NaN")
        return values

    async def predict(
        self, inputs: list[TextInput], *, truncate: bool | None, direction: str, raw_scores: bool,
        t: Timings, disconnected: DisconnectWaiter | None = None,
    ) -> list[list[tuple[str, float]]]:
        if self.spec.kind == "embedding":
            raise BackendError("Model is not a classifier model", metric="model_type")
        self.check_count(len(inputs))
        logits = np.stack(await self.infer("classify", inputs, truncate, direction, t, disconnected))
        if not raw_scores:
            logits = softmax(logits) if logits.shape[1] > 1 else sigmoid(logits)
        out: list[list[tuple[str, float]]] = []
        for row in logits:
            pairs = [(self.spec.id2label.get(str(i), f"LABEL_{i}"), float(s)) for i, s in enumerate(row)]
            # TEI's order, ties included: stable ascending sort, then reversed (server.rs, predict).
            out.append(sorted(pairs, key=lambda p: p[1])[::-1])
        return out

    async def similarity(
        self, source: str, sentences: list[str], *, truncate: bool | None, direction: str, prompt_name: str | None,
        t: Timings, disconnected: DisconnectWaiter | None = None,
    ) -> list[float]:
        self._require("embedding", "Model is not an embedding model")
        self.check_count(len(sentences), "sentences", extra=1)
        prompt = self.prompt_for(prompt_name)
        rows = await self.infer("embed", [source, *sentences], truncate, direction, t, disconnected, prompt)
        unit = normalize_rows(np.stack(rows))
        return [float(s) for s in unit[1:] @ unit[0]]

    async def tokenize(
        self, texts: list[str], *, add_special_tokens: bool, prompt_name: str | None
    ) -> list[list[dict[str, object]]]:
        """TEI's /tokenize: no truncation, so each text must stay under the character cap (422 else)."""
        self.check_count(len(texts))
        for text in texts:
            self.engine.tokenizer.check_length(text)
        prompt = self.prompt_for(prompt_name)
        texts = [prompt + x for x in texts] if prompt else texts
        tokenizer = self.engine.tokenizer
        return await self._tool(len(texts), lambda: tokenizer.tokenize(texts, add_special_tokens=add_special_tokens))

    async def decode(self, ids: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
        self.check_count(len(ids), "ids")
        if any(not x for x in ids):
            raise EmptyError("`input_ids` cannot be empty")  # TEI's wording (core/src/tokenization.rs)
        tokenizer = self.engine.tokenizer
        return await self._tool(len(ids), lambda: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    async def _tool(self, n: int, work: Callable[[], T]) -> T:
        """Run a /tokenize or /decode job: one permit per input, on the tools' own threads."""
        if not self.permits.try_acquire(n):
            raise OverloadedError()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.tools_executor, work)
        finally:
            self.permits.release(n)
