"""The model compiled by OpenVINO for the CPU: the same Hugging Face weights, converted once.

On this project's 2-core test host (AVX-512 BF16) OpenVINO's CPU plugin ran all-MiniLM-L6-v2 in
bfloat16 at 1.4x torch's throughput on batches of 32 and took 5-6 ms for one input against 9-10
ms, and it was closer to float32 (benchmarks/engine_ceiling.py, docs/benchmarks.md): its kernels
fuse each layer's matmuls and activations and pack the weights for the CPU's bf16 instructions,
which torch's eager ops do not.

Loading: the torch model is loaded in float32 and converted (``openvino.convert_model``, dynamic
batch and length); the result is saved as OpenVINO IR in a cache keyed by the model's files and
the library versions, so later starts read the IR without loading torch weights. The compiled
model's blob is cached too (OpenVINO's ``CACHE_DIR``). The precision is the compile-time hint
(bf16 where the CPU has it), and /info reports what OpenVINO says it runs at.

Batches are padded (OpenVINO takes [batch, longest] tensors), so the batcher's padded cost and
its length-sorted windows apply. Each forward thread has its own infer requests, and a batch runs
on every thread when it runs alone, else on its forward thread's share (``OpenVinoEngine``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import hardware
from .engine import (
    CPU_FORWARD_WORKERS,
    DTYPES,
    BaseEngine,
    ModelFiles,
    lexical_weights,
    load_sparse_head,
    load_weights,
    padded_inputs,
)
from .errors import StartupError
from .tokenization import Encoded

log = logging.getLogger("fallback_worker.openvino")

# The compile-time precision hint per dtype, and back from OpenVINO's element type names.
PRECISION_HINTS = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}
DTYPE_OF_PRECISION = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}
IR_NAME = "model.xml"


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """OpenVINO reports usage to Google Analytics (and keeps an id and a counter under ~/intel)
    unless the user opted out in a file there; it does neither when it runs in CI (``CI=true``),
    its only switch without that file. Its telemetry is set up when openvino is imported and again
    by every conversion, so both run with the switch set."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


def _openvino() -> Any:
    """The openvino module, imported with its telemetry off (every import here goes through this)."""
    with _telemetry_off():
        # The converter (openvino.tools.ovc) sets up its own telemetry when it is first imported.
        import openvino.tools.ovc
    return openvino


def available() -> bool:
    """Whether the openvino package is installed (in the ``worker`` extra)."""
    try:
        _openvino()
    except ImportError:
        return False
    return True


def ir_key(files: ModelFiles) -> str:
    """Changes when the model's files or the converting libraries do, so a stale IR is never read."""
    import torch
    import transformers

    h = hashlib.sha256()
    h.update(json.dumps([_openvino().__version__, torch.__version__, transformers.__version__,
                         files.spec.kind, files.auto_cls.__name__]).encode())
    for path in sorted(files.model_dir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def convert(files: ModelFiles) -> Any:
    """The Hugging Face model (float32) as an OpenVINO model with dynamic batch and length."""
    import torch

    ov = _openvino()
    model = load_weights(files, "float32")
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    example = {name: torch.ones(2, 8, dtype=torch.long) for name in names}
    if "token_type_ids" in example:
        example["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _telemetry_off():
            # Tracing warns where transformers branches on shapes (padding length, causal mask):
            # for an encoder with an attention mask those branches do not depend on the input,
            # which the tests check with batches of other sizes and lengths than the example's.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            return ov.convert_model(model, example_input=example)
    except Exception as exc:  # noqa: BLE001 - conversion fails in many ways; each means "use torch"
        raise StartupError(f"OpenVINO cannot convert {files.model_dir.name} ({type(exc).__name__}: {exc})") from None


def read_or_convert(files: ModelFiles, cache_dir: Path | None) -> Any:
    """The OpenVINO model from the IR cache, or converted now (and saved there when it is writable)."""
    ov = _openvino()

    core = ov.Core()
    target = cache_dir / ir_key(files) if cache_dir is not None else None
    if target is not None and (target / IR_NAME).is_file():
        log.info("reading the converted model from %s", target)
        return core.read_model(target / IR_NAME)
    log.info("converting %s for OpenVINO (once per model and library version)", files.model_dir.name)
    ov_model = convert(files)
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
            ov.save_model(ov_model, staging / IR_NAME, compress_to_fp16=False)
            try:
                staging.rename(target)  # atomic: another worker converting the same model may win
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        except OSError as exc:
            log.warning("cannot cache the converted model in %s (%s); it is converted at every start", cache_dir, exc)
    return ov_model


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


class OpenVinoEngine(BaseEngine):
    """Padded batches through OpenVINO compiled models; the same outputs as the torch engine.

    Two compilations of one model, because OpenVINO fixes a stream's threads at compile time: one
    stream with every thread, for a batch that runs alone (one input: 5.6 ms on two threads
    against 10.7 on one), and one stream per forward thread with the threads split, for batches
    that run at once (32 clients x 1 input: 268-281 inputs/s against 240-258 on the one stream).
    ``use_threads`` picks per batch, as it sizes torch's pool for the torch engine.
    """

    # A lone batch gets every thread however small it is: OpenVINO's kernels split even one
    # input's work well (see above).
    split_min_tokens = 0
    # A compiled call costs far less than torch's eager one: with 32 here, one client's 16 inputs
    # (split into two batches that run at once) did 270-280 inputs/s in the model alone against
    # 230-245 with torch's 128 (bigger, unevenly padded halves), and 16 was no better than 32
    # (docs/benchmarks.md, "Batch cost").
    batch_overhead_tokens = 32

    def __init__(self, compiled: dict[int, Any], files: ModelFiles, *, streams: int, threads: int) -> None:
        self.compiled = compiled  # passes at once -> the compiled model for that share
        self.tokenizer = files.tokenizer
        self.pad_id = files.pad_id
        self.threads = threads
        self.streams = streams
        alone = compiled[1]
        self._input_names = {name for port in alone.inputs for name in port.get_names()}
        wanted = "logits" if files.spec.kind != "embedding" else "last_hidden_state"
        self._output = next((i for i, o in enumerate(alone.outputs) if wanted in o.get_names()), 0)
        self._local = threading.local()
        sparse = load_sparse_head(files)
        self._sparse: tuple[np.ndarray, float] | None = None
        if sparse is not None:
            self._sparse = (sparse.weight.detach().numpy()[0].astype(np.float32), float(sparse.bias.detach()[0]))
        self.unused_sparse_ids = files.unused_sparse_ids
        precision = alone.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.spec = replace(
            files.spec, engine="openvino", unpadded=False,
            dtype=DTYPE_OF_PRECISION.get(precision, files.spec.dtype),
        )

    @classmethod
    def from_files(
        cls, files: ModelFiles, *, streams: int | None = None, cache_dir: Path | None = None
    ) -> OpenVinoEngine:
        """Compile for the CPU, for ``streams`` forward passes at once (default: two where there
        are two cores), the usable cores split between them."""
        ov = _openvino()

        if files.spec.device != "cpu":
            raise StartupError(f"--engine openvino runs on the CPU; --device is {files.spec.device}")
        if files.spec.dtype not in DTYPES:
            raise StartupError(f"--dtype {files.spec.dtype!r} is not one of {', '.join(DTYPES)}")
        threads = hardware.torch_threads()
        streams = max(1, min(streams or CPU_FORWARD_WORKERS, threads))
        ov_model = read_or_convert(files, cache_dir)
        core = ov.Core()
        if cache_dir is not None and _writable_dir(cache_dir / "compiled"):
            core.set_property({"CACHE_DIR": str(cache_dir / "compiled")})
        compiled = {}
        for share in sorted({1, streams}):
            config = {
                "INFERENCE_PRECISION_HINT": PRECISION_HINTS[files.spec.dtype],
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": share,
                # The worker shares its cores with its tokenizer and HTTP threads (and on a shared
                # host with other tenants): threads pinned to cores would stall behind them.
                "ENABLE_CPU_PINNING": False,
            }
            try:
                compiled[share] = core.compile_model(ov_model, "CPU", config)
            except Exception as exc:  # noqa: BLE001 - the plugin's errors have no common type
                raise StartupError(f"OpenVINO cannot compile {files.model_dir.name} for the CPU: {exc}") from None
        return cls(compiled, files, streams=streams, threads=threads)

    def default_forward_workers(self) -> int:
        return self.streams

    def use_threads(self, share: int = 1) -> None:
        """The next batch on this thread runs alone (every thread) or beside others (one stream)."""
        self._local.share = 1 if share <= 1 else self.streams

    # ---- forward passes ------------------------------------------------------------------
    def _request(self) -> Any:
        """This forward thread's infer request for its current share (a request is not thread-safe)."""
        share = getattr(self._local, "share", 1)
        requests: dict[int, Any] = self._local.__dict__.setdefault("requests", {})
        if share not in requests:
            requests[share] = self.compiled[share].create_infer_request()
        return requests[share]

    def _forward(self, batch: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """The chosen output for a padded batch, and the lengths of its inputs."""
        lengths = np.fromiter((len(e.ids) for e in batch), dtype=np.int64, count=len(batch))
        inputs = padded_inputs(batch, self.pad_id, type_ids="token_type_ids" in self._input_names)
        result = self._request().infer(inputs)
        # The output tensor is the request's own buffer, overwritten by its next batch: copy it.
        return np.array(result[self._output], dtype=np.float32), lengths

    def embed(self, batch: Sequence[Encoded]) -> np.ndarray:
        hidden, lengths = self._forward(batch)
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.spec.pooling == "last-token":
            pooled = hidden[np.arange(len(batch)), lengths - 1]
        else:
            mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
            pooled = np.einsum("bld,bl->bd", hidden, mask) / lengths[:, None].astype(np.float32)
        out: np.ndarray = np.ascontiguousarray(pooled)
        return out

    def _token_rows(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        hidden, lengths = self._forward(batch)
        return [hidden[row, :n] for row, n in enumerate(lengths)]

    def embed_all(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        return self._token_rows(batch)

    def embed_sparse(self, batch: Sequence[Encoded]) -> list[list[tuple[int, float]]]:
        if self._sparse is None:
            raise RuntimeError("this model has no sparse head")
        weight, bias = self._sparse
        return [
            lexical_weights(enc.ids, np.maximum(rows @ weight + bias, 0.0), self.unused_sparse_ids)
            for enc, rows in zip(batch, self._token_rows(batch), strict=True)
        ]

    def classify(self, batch: Sequence[Encoded]) -> np.ndarray:
        logits, _ = self._forward(batch)
        return logits
