"""The model: load it like TEI does (pooling, max input length, dtype) and run padded batches.

Everything here runs on the batcher's forward thread or at startup; nothing touches the event loop.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from tokenizers import Tokenizer

from . import hardware
from .errors import StartupError
from .packed import PackedBatch, PackedEncoder
from .tokenization import Encoded, TextTokenizer

log = logging.getLogger("fallback_worker.engine")

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
POOLINGS = ("cls", "mean", "last-token", "splade")
# Models whose position ids start after the padding index (TEI's "position offset").
OFFSET_MODEL_TYPES = ("xlm-roberta", "camembert", "roberta")

# What one forward batch answers, one row per input in order: an array for "embed" and "classify",
# a list for "sparse" (token id, weight) and "all" (per-token hidden states).
BatchResult: TypeAlias = np.ndarray | list[list[tuple[int, float]]] | list[np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """What /info reports about the model, plus what the server needs to route requests."""

    kind: str  # "embedding" | "reranker" | "classifier"
    pooling: str | None
    id2label: dict[str, str]
    max_input_length: int
    hidden_size: int
    dtype: str
    device: str
    sparse: bool
    prompts: dict[str, str] = field(default_factory=dict)
    unpadded: bool = False  # batches run packed, without padding (packed.py); else padded through Hugging Face
    engine: str = "torch"  # what runs the model: "torch" or "openvino" (openvino_engine.py)


def resolve_model_dir(model_id: str, revision: str | None, cache_dir: str | None, token: str | None) -> Path:
    """A local directory is used as is; anything else is a hub id fetched into the cache (TEI's rule)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                model_id,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "sparse_linear.pt", "1_Pooling/*"],
            )
        )
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types; all mean "cannot start"
        raise StartupError(
            f"could not get model {model_id!r} (revision {revision or 'main'}): {exc}. "
            "Pass a local directory with --model-id, or make the hub reachable."
        ) from None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())  # the model's config files are JSON objects
    except (OSError, ValueError):
        return None
    return data


def pooling_from_dir(model_dir: Path, model_type: str) -> str:
    """1_Pooling/config.json like TEI; without it, BERT-family models fall back to CLS."""
    cfg = _read_json(model_dir / "1_Pooling" / "config.json")
    if cfg is not None:
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        if cfg.get("pooling_mode_lasttoken"):
            return "last-token"
        raise StartupError(f"{model_dir}/1_Pooling/config.json selects a pooling TEI does not support; pass --pooling")
    if "bert" in model_type:
        log.warning("no 1_Pooling/config.json; using CLS pooling like TEI does for BERT-family models")
        return "cls"
    raise StartupError(f"{model_dir} has no 1_Pooling/config.json; pass --pooling cls|mean|last-token")


def max_input_length_from_dir(model_dir: Path, config: Any) -> int:
    """sentence_bert_config max_seq_length, else max_position_embeddings minus the position offset."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type in OFFSET_MODEL_TYPES:
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    st = _read_json(model_dir / "sentence_bert_config.json")
    if st and st.get("max_seq_length"):
        return min(int(st["max_seq_length"]), positions)
    log.warning("Could not find a Sentence Transformers config")
    return positions


@dataclass(frozen=True)
class ModelFiles:
    """What a model directory says before any weights are read: enough for every engine to load it."""

    model_dir: Path
    config: Any  # transformers' PretrainedConfig
    spec: ModelSpec
    tokenizer: TextTokenizer
    pad_id: int
    auto_cls: Any  # the transformers class that loads the weights
    sparse_file: Path | None  # bge-m3's lexical head (sparse_linear.pt)
    unused_sparse_ids: frozenset[int]  # tokens that carry no term in lexical weights


def describe_model(
    model_id: str,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    pooling: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    max_batch_tokens: int = 16384,
    auto_truncate: bool = True,
    device: str | None = None,
) -> ModelFiles:
    """Fetch (if needed) and read a model's config, tokenizer and pooling as TEI does; no weights."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    model_dir = resolve_model_dir(model_id, revision, cache_dir, token)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - any failure here is a startup error with a message
        raise StartupError(f"{model_dir}: cannot read config.json: {exc}") from None
    if not (model_dir / "tokenizer.json").is_file():
        raise StartupError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required, as in TEI)")

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not dtype:
        dtype, why = hardware.default_dtype(device)
        log.info("dtype %s (%s; --dtype chooses)", dtype, why)
    if dtype not in DTYPES:
        raise StartupError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "float16" and device == "cpu":
        log.warning("float16 on CPU is slow and inexact; bfloat16 or float32 is better")

    archs = list(getattr(config, "architectures", None) or [])
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if is_classifier:
        if pooling:
            log.warning("--pooling is ignored for classifier and re-ranker models (as in TEI)")
        pooling = None
        id2label = {str(k): str(v) for k, v in (config.id2label or {0: "LABEL_0"}).items()}
        kind = "reranker" if len(id2label) == 1 else "classifier"
        auto_cls: Any = AutoModelForSequenceClassification
    else:
        if pooling is None:
            pooling = pooling_from_dir(model_dir, config.model_type)
        if pooling == "splade":
            raise StartupError("--pooling splade needs a *ForMaskedLM model, which fallback_worker does not serve")
        if pooling not in POOLINGS:
            raise StartupError(f"--pooling {pooling!r} is not one of cls, mean, last-token")
        id2label = {}
        kind = "embedding"
        auto_cls = AutoModel

    max_input_length = max_input_length_from_dir(model_dir, config)
    if max_input_length > max_batch_tokens:
        if not auto_truncate:
            raise StartupError(
                f"`--max-batch-tokens` ({max_batch_tokens}) cannot be lower than the model's max input length "
                f"({max_input_length}) without --auto-truncate"
            )
        log.warning("max_input_length %d > max_batch_tokens; clamping to %d", max_input_length, max_batch_tokens)
        max_input_length = max_batch_tokens

    raw_tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    pad_id = getattr(config, "pad_token_id", None)
    if pad_id is None:
        pad_id = 0

    sparse_file: Path | None = model_dir / "sparse_linear.pt"
    unused = frozenset[int]()
    if kind == "embedding" and sparse_file is not None and sparse_file.is_file():
        # bge-m3 drops these from its lexical weights: they carry no term.
        unused = frozenset(
            i for i in (config.bos_token_id, config.eos_token_id, pad_id, raw_tokenizer.token_to_id("<unk>"),
                        raw_tokenizer.token_to_id("[CLS]"), raw_tokenizer.token_to_id("[SEP]"),
                        raw_tokenizer.token_to_id("[UNK]"))
            if i is not None
        )
    else:
        sparse_file = None

    st_config = _read_json(model_dir / "config_sentence_transformers.json") or {}
    spec = ModelSpec(
        kind=kind,
        pooling=pooling,
        id2label=id2label,
        max_input_length=max_input_length,
        hidden_size=int(config.hidden_size),
        dtype=dtype,
        device=device,
        sparse=sparse_file is not None,
        prompts={str(k): str(v) for k, v in (st_config.get("prompts") or {}).items()},
    )
    return ModelFiles(
        model_dir=model_dir, config=config, spec=spec, tokenizer=TextTokenizer(raw_tokenizer, max_input_length),
        pad_id=int(pad_id), auto_cls=auto_cls, sparse_file=sparse_file, unused_sparse_ids=unused,
    )


def load_weights(files: ModelFiles, dtype: str) -> torch.nn.Module:
    """The Hugging Face model in ``dtype`` on the CPU, in eval mode."""
    try:
        model: torch.nn.Module = files.auto_cls.from_pretrained(files.model_dir, dtype=DTYPES[dtype])
    except Exception as exc:  # noqa: BLE001 - any failure here is a startup error with a message
        raise StartupError(f"{files.model_dir}: cannot load the weights: {exc}") from None
    return model.eval()


def load_sparse_head(files: ModelFiles) -> torch.nn.Linear | None:
    """bge-m3's lexical head (hidden -> 1), in float32 on the CPU; None for other models."""
    if files.sparse_file is None:
        return None
    state = torch.load(files.sparse_file, map_location="cpu", weights_only=True)
    linear = torch.nn.Linear(files.config.hidden_size, 1)
    linear.load_state_dict(state)
    return linear.eval()


def lexical_weights(ids: Sequence[int], weights: np.ndarray, unused: frozenset[int]) -> list[tuple[int, float]]:
    """bge-m3's sparse output for one input: per token id, its largest positive weight, by id."""
    best: dict[int, float] = {}
    for tid, w in zip(ids, weights, strict=True):
        if tid in unused or w <= 0.0:
            continue
        if w > best.get(tid, 0.0):
            best[tid] = float(w)
    return sorted(best.items())


def padded_inputs(batch: Sequence[Encoded], pad_id: int, *, type_ids: bool) -> dict[str, np.ndarray]:
    """A batch as the model's [batch, longest] int64 inputs: ids, attention mask and (when the
    model takes them) token type ids, padding after each input."""
    longest = max(len(e.ids) for e in batch)
    ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    types = np.zeros((len(batch), longest), dtype=np.int64)
    for row, enc in enumerate(batch):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask}
    if type_ids:
        arrays["token_type_ids"] = types
    return arrays


class BaseEngine:
    """What the server needs from a loaded model, whatever runs it: the spec, the tokenizer, and
    ``run(task, batch)`` returning float32 numpy results, one row per input in order."""

    spec: ModelSpec
    tokenizer: TextTokenizer
    threads: int | None  # intra-op threads on CPU; None on a GPU
    # Below this many tokens a batch runs on one forward thread's share of the threads even when it
    # runs alone: torch splitting so little work across cores costs more in wake-ups than it saves.
    split_min_tokens = 256
    # What one more forward pass costs, in padded tokens, when the batcher weighs fewer, more padded
    # batches against more, tighter ones (batcher.plan_batches). torch: the per-call work (Python
    # module calls, kernel launches, small matmuls that use the cores badly); measured on
    # all-MiniLM-L6-v2 on CPU, where batch 8 vs 16 of equal lengths differs by about this much. It
    # only has to be the right order of magnitude to beat both "fill every batch" and "equal-length
    # batches".
    batch_overhead_tokens = 128

    def embed(self, batch: Sequence[Encoded]) -> np.ndarray:
        raise NotImplementedError

    def embed_sparse(self, batch: Sequence[Encoded]) -> list[list[tuple[int, float]]]:
        raise NotImplementedError

    def embed_all(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        raise NotImplementedError

    def classify(self, batch: Sequence[Encoded]) -> np.ndarray:
        raise NotImplementedError

    def use_threads(self, share: int = 1) -> None:
        """Called on a forward thread before each batch with how many passes run at once."""

    def default_forward_workers(self) -> int:
        """Forward passes to run at once when --forward-workers is not given."""
        return 1 if self.threads is None else min(CPU_FORWARD_WORKERS, self.threads)

    def run(self, task: str, batch: Sequence[Encoded]) -> BatchResult:
        if task == "embed":
            return self.embed(batch)
        if task == "sparse":
            return self.embed_sparse(batch)
        if task == "classify":
            return self.classify(batch)
        if task == "all":
            return self.embed_all(batch)
        raise ValueError(task)

    def task_for_model(self) -> str:
        return "embed" if self.spec.kind == "embedding" else "classify"

    def health(self) -> None:
        """A one-token forward pass, as TEI runs after a failure."""
        self.run(self.task_for_model(), [Encoded([self._filler_id()], [0], 1)])

    def _filler_id(self) -> int:
        # Any real, non-padding token will do for health checks and warm-up.
        return 5 if self.tokenizer.plain.get_vocab_size() > 5 else 0

    def warmup_batch(self, max_batch_tokens: int, max_batch_requests: int | None) -> list[Encoded]:
        """The largest batch TEI would warm up with.

        On CPU that is a single sequence of min(max_input_length, max_batch_tokens) tokens (TEI PR #792): a full
        max_batch_tokens batch would take minutes on a small CPU for no gain, as CPU memory is not the limit.
        On CUDA it is max_batch_tokens tokens in sequences of max_input_length, which sets the memory peak.
        """
        length = min(self.spec.max_input_length, max_batch_tokens)
        count = 1
        if self.spec.device.startswith("cuda"):
            count = max(1, max_batch_tokens // length)
            if max_batch_requests:
                count = min(count, max_batch_requests)
        token = self._filler_id()
        return [Encoded([token] * length, [0] * length, length) for _ in range(count)]

    def warmup(self, max_batch_tokens: int, max_batch_requests: int | None) -> tuple[int, int]:
        """One forward of the warm-up batch; returns (sequences, tokens per sequence)."""
        batch = self.warmup_batch(max_batch_tokens, max_batch_requests)
        self.run(self.task_for_model(), batch)
        return len(batch), len(batch[0].ids)


# Two forward passes at once on CPU, each with half of the torch threads. One pass over a batch
# leaves the cores partly idle: Python module calls, per-op thread wake-ups and barriers, and small
# matmuls that one core does about as fast as two (a one-input batch took 8 ms on 1 thread and
# 14 ms on 2). A second pass fills those gaps. See docs/benchmarks.md for the measurements.
CPU_FORWARD_WORKERS = 2


class Engine(BaseEngine):
    """One model run by torch: packed batches for BERT-family models (packed.py), else padded
    through the Hugging Face modules."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: TextTokenizer,
        spec: ModelSpec,
        *,
        pad_id: int,
        sparse_linear: torch.nn.Linear | None = None,
        unused_sparse_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.pad_id = pad_id
        self.device = torch.device(spec.device)
        self.sparse_linear = sparse_linear
        self.unused_sparse_ids = unused_sparse_ids
        import inspect

        self._wants_type_ids = "token_type_ids" in inspect.signature(model.forward).parameters
        self.threads = hardware.torch_threads() if self.device.type == "cpu" else None
        self.use_threads()
        # The unpadded pass, where the model's layout allows it and its head is one we can call on
        # packed rows; everything else runs padded through the Hugging Face modules.
        self.packed: PackedEncoder | None = None
        self._head: Any = None
        if spec.unpadded:
            self.packed = PackedEncoder(model.base_model)
            self._head = _packed_head(model, spec.kind)

    def use_threads(self, share: int = 1) -> None:
        """Size torch's intra-op pool to the CPU quota, split between ``share`` threads that run the
        model at once; called on every thread that runs the model (the setting is per thread)."""
        if self.threads is not None:
            torch.set_num_threads(max(1, self.threads // share))

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, model_id: str, *, unpadded: bool = True, **options: Any) -> Engine:
        """``options``: describe_model's (revision, dtype, pooling, device, ...). ``unpadded``: run
        batches packed where the architecture allows it (see packed.py)."""
        return cls.from_files(describe_model(model_id, **options), unpadded=unpadded)

    @classmethod
    def from_files(cls, files: ModelFiles, *, unpadded: bool = True) -> Engine:
        spec = files.spec
        model = load_weights(files, spec.dtype).to(spec.device)
        sparse_linear = load_sparse_head(files)
        if sparse_linear is not None:
            sparse_linear = sparse_linear.to(device=spec.device, dtype=DTYPES[spec.dtype])
        unpadded = unpadded and PackedEncoder.supports(model.base_model) and _packed_head(model, spec.kind) is not None
        return cls(
            model, files.tokenizer, replace(spec, unpadded=unpadded), pad_id=files.pad_id,
            sparse_linear=sparse_linear, unused_sparse_ids=files.unused_sparse_ids,
        )

    # ---- forward passes ------------------------------------------------------------------
    def _pad(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        arrays = padded_inputs(batch, self.pad_id, type_ids=self._wants_type_ids)
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()}

    @torch.inference_mode()
    def _hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden: torch.Tensor = self.model(**inputs).last_hidden_state
        return hidden

    def _pack(self, batch: Sequence[Encoded]) -> tuple[torch.Tensor, PackedBatch]:
        """Last hidden states of an unpadded pass: [tokens, hidden], and the batch's layout."""
        assert self.packed is not None
        packed = self.packed.pack([e.ids for e in batch], [e.type_ids for e in batch], self.device)
        return self.packed.forward(packed), packed

    @torch.inference_mode()
    def embed(self, batch: Sequence[Encoded]) -> np.ndarray:
        """Pooled, unnormalized embeddings [batch, hidden] in float32."""
        if self.packed is not None:
            hidden, layout = self._pack(batch)
            if self.spec.pooling == "cls":
                pooled = PackedEncoder.first_tokens(hidden, layout).float()
            elif self.spec.pooling == "last-token":
                pooled = PackedEncoder.last_tokens(hidden, layout).float()
            else:
                pooled = PackedEncoder.mean(hidden, layout)
            return pooled.cpu().numpy()
        inputs = self._pad(batch)
        padded = self._hidden(inputs)
        mask = inputs["attention_mask"]
        if self.spec.pooling == "cls":
            pooled = padded[:, 0].float()
        elif self.spec.pooling == "last-token":
            last = mask.sum(dim=1) - 1
            pooled = padded[torch.arange(padded.shape[0], device=padded.device), last].float()
        else:
            m = mask.unsqueeze(-1).to(padded.dtype)
            pooled = (padded * m).float().sum(dim=1) / m.float().sum(dim=1).clamp(min=1.0)
        return pooled.cpu().numpy()

    def _token_rows(
        self, batch: Sequence[Encoded], head: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> list[np.ndarray]:
        """Per input, its tokens' last hidden states (or ``head`` of them) in float32, padding removed."""
        if self.packed is not None:
            hidden, layout = self._pack(batch)
            out = (hidden if head is None else head(hidden)).float().cpu().numpy()
            return list(np.split(out, np.cumsum(layout.lengths[:-1])))
        padded = self._hidden(self._pad(batch))
        rows = (padded if head is None else head(padded)).float().cpu().numpy()
        return [rows[row, : len(enc.ids)] for row, enc in enumerate(batch)]

    @torch.inference_mode()
    def embed_sparse(self, batch: Sequence[Encoded]) -> list[list[tuple[int, float]]]:
        """bge-m3 lexical weights: relu(Linear(hidden)) per token, max-pooled per token id."""
        linear = self.sparse_linear
        if linear is None:
            raise RuntimeError("this model has no sparse head")
        rows = self._token_rows(batch, lambda h: torch.relu(linear(h)).squeeze(-1))
        return [lexical_weights(enc.ids, w, self.unused_sparse_ids) for enc, w in zip(batch, rows, strict=True)]

    @torch.inference_mode()
    def embed_all(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        """Per-token hidden states [tokens, hidden] per input, padding removed (/embed_all)."""
        return self._token_rows(batch)

    @torch.inference_mode()
    def classify(self, batch: Sequence[Encoded]) -> np.ndarray:
        """Raw logits [batch, labels] in float32."""
        if self.packed is not None:
            hidden, layout = self._pack(batch)
            logits: torch.Tensor = self._head(PackedEncoder.first_tokens(hidden, layout))
        else:
            logits = self.model(**self._pad(batch)).logits
        scores: np.ndarray = logits.float().cpu().numpy()
        return scores

    def warmup(self, max_batch_tokens: int, max_batch_requests: int | None) -> tuple[int, int]:
        batch = self.warmup_batch(max_batch_tokens, max_batch_requests)
        try:
            self.run(self.task_for_model(), batch)
        except Exception as exc:  # any failure of the packed pass: fall back to padded, or fail as before
            if self.packed is None:
                raise
            # The unpadded pass is plain torch, but a device or kernel this was never run on may
            # lack what it uses (boolean-mask attention); padded batches are what transformers runs.
            log.warning("the unpadded forward pass failed at warm-up (%s); running padded batches instead", exc)
            self.packed = None
            self.spec = replace(self.spec, unpadded=False)
            self.run(self.task_for_model(), batch)
        return len(batch), len(batch[0].ids)


def _packed_head(model: Any, kind: str) -> Any:
    """What turns first-token states [batch, hidden] into the model's output on the unpadded path.

    Embedding models need nothing more (pooling is done on the rows). The sequence classifiers
    of the BERT family read the first token of [batch, length, hidden], so they are given a
    length of one: RoBERTa/XLM-R's head (dense, tanh, out_proj) and BERT's pooler + classifier.
    None: a classifier whose head we do not know, which then runs padded.
    """
    if kind == "embedding":
        return lambda first: first
    model_type = getattr(model.config, "model_type", "")
    if model_type in ("roberta", "xlm-roberta") and hasattr(model, "classifier"):
        return lambda first: model.classifier(first.unsqueeze(1))
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    if model_type == "bert" and pooler is not None and hasattr(model, "classifier"):
        return lambda first: model.classifier(pooler(first.unsqueeze(1)))
    return None


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    normalized: np.ndarray = x / np.maximum(norms, 1e-12)
    return normalized


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def is_nan(value: float) -> bool:
    return math.isnan(value)
