"""What tei-manager knows about models and about TEI's images.

Two tables live here:

* `KNOWN_MODELS`: the architecture numbers the VRAM model needs (parameters, hidden size,
  layers, attention heads, longest input) for models we deploy.  A profile may serve a
  model that is not listed by giving the numbers itself (`params_millions`, `hidden_size`,
  `num_layers`, `max_input_length` on the model); `model_info()` merges both.
* `TEI_ARCH_PREFIX`: the tag prefix of the TEI image built for each CUDA compute
  capability (TEI README, section "Docker images"; see docs/vram-model.md).  TEI has no
  image below Turing (7.5), and a compute-capability mismatch is fatal at startup, so an
  unknown capability is "unsupported", never guessed.

Pure core: standard library, pydantic models and tei_manager errors only.
"""

from __future__ import annotations

from dataclasses import dataclass

from tei_manager.core.models import ModelSpec, Pooling, Task

#: Head dimension assumed when a model's head count is unknown (every BERT/XLM-R size uses 64).
DEFAULT_HEAD_DIM = 64


@dataclass(frozen=True)
class ModelInfo:
    """Architecture facts of one model, as the planner needs them."""

    hub_id: str
    task: Task
    params_millions: float
    hidden_size: int
    num_layers: int
    max_input_length: int
    num_heads: int
    default_pooling: Pooling | None = None

    @property
    def params(self) -> int:
        return int(self.params_millions * 1_000_000)


def _info(hub_id: str, task: Task, params_m: float, hidden: int, layers: int, heads: int,
          max_len: int, pooling: Pooling | None) -> ModelInfo:
    return ModelInfo(hub_id=hub_id, task=task, params_millions=params_m, hidden_size=hidden,
                     num_layers=layers, num_heads=heads, max_input_length=max_len,
                     default_pooling=pooling)


# Numbers from each model's config.json / sentence_bert_config.json on the hub.  max_input_length
# is what TEI reports in /info (for XLM-R models: max_position_embeddings 8194 minus the offset 2).
KNOWN_MODELS: dict[str, ModelInfo] = {
    info.hub_id: info
    for info in (
        _info("BAAI/bge-m3", "embed", 568.0, 1024, 24, 16, 8192, "cls"),
        _info("BAAI/bge-reranker-v2-m3", "rerank", 568.0, 1024, 24, 16, 8192, None),
        _info("BAAI/bge-reranker-base", "rerank", 278.0, 768, 12, 12, 512, None),
        _info("BAAI/bge-reranker-large", "rerank", 560.0, 1024, 24, 16, 512, None),
        _info("BAAI/bge-large-en-v1.5", "embed", 335.0, 1024, 24, 16, 512, "cls"),
        _info("BAAI/bge-base-en-v1.5", "embed", 109.0, 768, 12, 12, 512, "cls"),
        _info("BAAI/bge-small-en-v1.5", "embed", 33.4, 384, 12, 12, 512, "cls"),
        _info("sentence-transformers/all-MiniLM-L6-v2", "embed", 22.7, 384, 6, 12, 256, "mean"),
        _info("cross-encoder/ms-marco-MiniLM-L-6-v2", "rerank", 22.7, 384, 6, 12, 512, None),
    )
}


class UnknownModel(LookupError):
    """A model is neither in the catalog nor described by the profile; `missing` names the fields."""

    def __init__(self, hub_id: str, missing: list[str]) -> None:
        self.hub_id = hub_id
        self.missing = missing
        super().__init__(f"{hub_id}: missing {', '.join(missing)}")


def model_info(spec: ModelSpec) -> ModelInfo:
    """Catalog entry for `spec.id`, overridden by whatever numbers the profile gives.

    Raises `UnknownModel` when the model is not in the catalog and the profile leaves out
    one of params_millions / hidden_size / num_layers / max_input_length.
    """
    known = KNOWN_MODELS.get(spec.id)
    params = spec.params_millions or (known.params_millions if known else None)
    hidden = spec.hidden_size or (known.hidden_size if known else None)
    layers = spec.num_layers or (known.num_layers if known else None)
    max_len = spec.max_input_length or (known.max_input_length if known else None)
    missing = [name for name, value in (("params_millions", params), ("hidden_size", hidden),
                                        ("num_layers", layers), ("max_input_length", max_len))
               if value is None]
    if missing:
        raise UnknownModel(spec.id, missing)
    assert params is not None and hidden is not None and layers is not None and max_len is not None
    heads = known.num_heads if known and hidden == known.hidden_size else max(1, hidden // DEFAULT_HEAD_DIM)
    return ModelInfo(
        hub_id=spec.id,
        task=spec.task,
        params_millions=params,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        max_input_length=max_len,
        default_pooling=known.default_pooling if known else None,
    )


# TEI image tag prefix per compute capability ("" = the bare version tag, built for sm80).
TEI_ARCH_PREFIX: dict[tuple[int, int], str] = {
    (7, 5): "turing",
    (8, 0): "",
    (8, 6): "86",
    (8, 9): "89",
    (9, 0): "hopper",
    (10, 0): "100",
    (12, 0): "120",
    (12, 1): "121",
}
TEI_CPU_PREFIX = "cpu"
#: The Turing image ships with flash attention off, so its batches are padded (TEI README).
TEI_NO_FLASH_ARCHES: frozenset[tuple[int, int]] = frozenset({(7, 5)})


def tei_tag(compute_capability: tuple[int, int] | None, version: str) -> str | None:
    """The TEI image tag for a GPU (or for CPU when `compute_capability` is None).

    Returns None when TEI publishes no image for that compute capability (below 7.5, or an
    architecture this table does not list): the planner then falls back or refuses.
    """
    if compute_capability is None:
        return f"{TEI_CPU_PREFIX}-{version}"
    prefix = TEI_ARCH_PREFIX.get(tuple(compute_capability))  # type: ignore[arg-type]
    if prefix is None:
        return None
    return f"{prefix}-{version}" if prefix else version


def tei_image(repository: str, version: str, compute_capability: tuple[int, int] | None) -> str | None:
    """`<repository>:<tag>` as `tei_tag`, or None when TEI cannot run on that GPU."""
    tag = tei_tag(compute_capability, version)
    return None if tag is None else f"{repository}:{tag}"


def tei_supports(compute_capability: tuple[int, int]) -> bool:
    return tuple(compute_capability) in TEI_ARCH_PREFIX


def uses_flash_attention(compute_capability: tuple[int, int] | None) -> bool:
    """Whether TEI batches are unpadded (flash attention) on this device; CPU batches are padded."""
    if compute_capability is None:
        return False
    return tuple(compute_capability) not in TEI_NO_FLASH_ARCHES


def supported_arches() -> str:
    """Human list of the compute capabilities TEI has images for, for error messages."""
    return ", ".join(f"{a}.{b}" for a, b in sorted(TEI_ARCH_PREFIX))
