"""The unpadded (packed) forward pass computes what the padded Hugging Face pass computes.

Each model runs the same mixed-length batch both ways: a one-token input, short and long texts,
and an input cut at the model's max length, so that padding would be most of a padded batch.
In float32 the two agree to rounding; in bfloat16 to bfloat16's rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fallback_worker.batcher import Job, plan_batches
from fallback_worker.engine import Engine
from fallback_worker.tokenization import Encoded

TEXTS = [
    "a",
    "The quarterly report shows revenue grew by twelve percent.",
    "季度报告显示收入增长了百分之十二。",
    "Short.",
    " ".join(["a long input that is cut at the model's maximum input length"] * 80),
    "Der Quartalsbericht zeigt ein Umsatzwachstum von zwölf Prozent.",
]


def _both(model: Path, dtype: str) -> tuple[Engine, Engine]:
    packed = Engine.load(str(model), dtype=dtype, device="cpu")
    padded = Engine.load(str(model), dtype=dtype, device="cpu", unpadded=False)
    assert packed.spec.unpadded and packed.packed is not None
    assert not padded.spec.unpadded and padded.packed is None
    return packed, padded


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos: np.ndarray = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return cos


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_minilm_mean_pooling_matches_the_padded_pass(minilm_dir: Path, dtype: str) -> None:
    packed, padded = _both(minilm_dir, dtype)
    batch = packed.tokenizer.encode(TEXTS, truncate=True)
    got, want = packed.embed(batch), padded.embed(batch)
    if dtype == "float32":
        np.testing.assert_allclose(got, want, atol=2e-5)
    else:
        assert _cosines(got, want).min() > 0.999


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xlm_roberta_cls_sparse_and_token_states_match(tiny_embedder_dir: Path, dtype: str) -> None:
    packed, padded = _both(tiny_embedder_dir, dtype)
    batch = packed.tokenizer.encode(TEXTS, truncate=True)
    atol = 2e-5 if dtype == "float32" else 0.05
    np.testing.assert_allclose(packed.embed(batch), padded.embed(batch), atol=atol)
    for got, want in zip(packed.embed_all(batch), padded.embed_all(batch), strict=True):
        assert got.shape == want.shape  # one row per token of that input: padding removed
        np.testing.assert_allclose(got, want, atol=atol)
    assert packed.spec.sparse  # the tiny bge-m3-shaped model has bge-m3's sparse head
    for got_row, want_row in zip(packed.embed_sparse(batch), padded.embed_sparse(batch), strict=True):
        if dtype == "float32":
            assert [t for t, _ in got_row] == [t for t, _ in want_row]
            np.testing.assert_allclose([w for _, w in got_row], [w for _, w in want_row], atol=2e-5)
        else:  # a weight near zero may round to either side of it; the rest agree
            assert len(set(dict(got_row)) ^ set(dict(want_row))) <= 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_encoder_scores_match(tiny_reranker_dir: Path, dtype: str) -> None:
    packed, padded = _both(tiny_reranker_dir, dtype)
    pairs: list[Any] = [("what grew?", t) for t in TEXTS]
    batch = packed.tokenizer.encode(pairs, truncate=True)
    got, want = packed.classify(batch), padded.classify(batch)
    assert got.shape == want.shape == (len(TEXTS), 1)
    np.testing.assert_allclose(got, want, atol=2e-5 if dtype == "float32" else 0.02)


def test_one_input_alone_and_in_a_batch_gets_the_same_vector(minilm_dir: Path) -> None:
    """Packing never lets one input see another's tokens (the attention mask holds per input)."""
    packed = Engine.load(str(minilm_dir), dtype="float32", device="cpu")
    batch = packed.tokenizer.encode(TEXTS, truncate=True)
    together = packed.embed(batch)
    for i, encoded in enumerate(batch):
        np.testing.assert_allclose(packed.embed([encoded]), together[i : i + 1], atol=2e-5)


def _jobs(lengths: list[int]) -> list[Job]:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return [Job("embed", Encoded([1] * n, [0] * n, n), loop.create_future()) for n in lengths]
    finally:
        loop.close()


def test_unpadded_batches_mix_lengths_within_the_padded_budget() -> None:
    # Twelve short inputs and four long ones: padded, they are best split apart; unpadded, padding
    # costs little (attention only), so they share one batch. The budget still bounds the padded
    # layout (count x longest), which attention holds in memory.
    lengths = [5] * 12 + [120] * 4
    padded = plan_batches(_jobs(lengths), max_batch_tokens=16384, max_batch_requests=16)
    unpadded = plan_batches(_jobs(lengths), max_batch_tokens=16384, max_batch_requests=16, padded=False)
    assert len(padded) == 2 and len(unpadded) == 1
    tight = plan_batches(_jobs([100] * 10), max_batch_tokens=500, max_batch_requests=None, padded=False)
    assert [len(b) for b in tight] == [5, 5]


def test_a_packed_pass_that_fails_at_warm_up_falls_back_to_padded(
    tiny_embedder_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device whose kernels lack what the packed pass uses (only a GPU could; simulated here by
    making the pass raise) must still serve: warm-up notices and switches to padded batches."""
    from fallback_worker import packed as packed_module

    engine = Engine.load(str(tiny_embedder_dir), dtype="float32", device="cpu")
    want = Engine.load(str(tiny_embedder_dir), dtype="float32", device="cpu", unpadded=False)

    def broken(self: Any, batch: Any) -> Any:
        raise RuntimeError("no kernel for boolean attention masks on this device")

    monkeypatch.setattr(packed_module.PackedEncoder, "forward", broken)
    engine.warmup(max_batch_tokens=512, max_batch_requests=None)
    assert not engine.spec.unpadded and engine.packed is None
    assert "running padded batches instead" in caplog.text
    batch = engine.tokenizer.encode(TEXTS, truncate=True)
    np.testing.assert_allclose(engine.embed(batch), want.embed(batch), atol=1e-6)
