"""The VRAM model and what `max_batch_tokens: auto` becomes."""

from __future__ import annotations

from tei_manager.core.catalog import KNOWN_MODELS
from tei_manager.core.tuning import (
    AUTO_MAX_BATCH_TOKENS,
    AUTO_STEP_TOKENS,
    FALLBACK_VRAM,
    TEI_CONTEXT_MIB,
    TEI_VRAM,
    auto_max_batch_tokens,
    cpu_auto_max_batch_tokens,
    estimate_vram,
)

M3 = KNOWN_MODELS["BAAI/bge-m3"]
MINILM = KNOWN_MODELS["sentence-transformers/all-MiniLM-L6-v2"]


def test_estimate_adds_up_and_matches_seed_004_order_of_magnitude():
    est = estimate_vram(M3, dtype="float16", max_batch_tokens=16384, flash=True, runtime=TEI_VRAM)
    assert est.total_mib == est.weights_mib + est.activations_mib + est.context_mib
    assert est.context_mib == TEI_CONTEXT_MIB
    assert 1000 < est.weights_mib < 1200  # 568M parameters x 2 bytes
    # seed 004: "embedding 1-3 GB, +0.5-1 GB for batching"; our model is a little more conservative
    assert 2000 < est.total_mib < 4000


def test_estimate_grows_with_tokens_and_precision():
    small = estimate_vram(M3, dtype="float16", max_batch_tokens=8192, flash=True, runtime=TEI_VRAM)
    large = estimate_vram(M3, dtype="float16", max_batch_tokens=16384, flash=True, runtime=TEI_VRAM)
    fp32 = estimate_vram(M3, dtype="float32", max_batch_tokens=8192, flash=True, runtime=TEI_VRAM)
    assert large.activations_mib == 2 * small.activations_mib
    assert abs(fp32.weights_mib - 2 * small.weights_mib) <= 1  # rounded up to whole MiB


def test_padded_attention_costs_more_than_flash():
    flash = estimate_vram(M3, dtype="float16", max_batch_tokens=16384, flash=True, runtime=TEI_VRAM)
    padded = estimate_vram(M3, dtype="float16", max_batch_tokens=16384, flash=False, runtime=TEI_VRAM)
    assert padded.activations_mib > 2 * flash.activations_mib


def test_fallback_worker_needs_more_than_tei():
    tei = estimate_vram(M3, dtype="float16", max_batch_tokens=8192, flash=True, runtime=TEI_VRAM)
    fallback = estimate_vram(M3, dtype="float16", max_batch_tokens=8192, flash=True, runtime=FALLBACK_VRAM)
    assert fallback.total_mib > tei.total_mib


def test_auto_is_the_largest_step_that_fits_the_share():
    share = 4000
    tokens = auto_max_batch_tokens(M3, share_mib=share, dtype="float16", flash=True, runtime=TEI_VRAM,
                                   accept_truncation=False)
    assert tokens is not None and tokens % AUTO_STEP_TOKENS == 0
    assert tokens >= 8192
    fits = estimate_vram(M3, dtype="float16", max_batch_tokens=tokens, flash=True, runtime=TEI_VRAM)
    over = estimate_vram(M3, dtype="float16", max_batch_tokens=tokens + AUTO_STEP_TOKENS, flash=True, runtime=TEI_VRAM)
    assert fits.total_mib <= share < over.total_mib


def test_auto_is_capped_on_big_gpus():
    assert auto_max_batch_tokens(M3, share_mib=70_000, dtype="float16", flash=True, runtime=TEI_VRAM,
                                 accept_truncation=False) == AUTO_MAX_BATCH_TOKENS


def test_auto_refuses_to_truncate_unless_accepted():
    need_8192 = estimate_vram(M3, dtype="float16", max_batch_tokens=8192, flash=True, runtime=TEI_VRAM).total_mib
    share = need_8192 - 100
    assert auto_max_batch_tokens(M3, share_mib=share, dtype="float16", flash=True, runtime=TEI_VRAM,
                                 accept_truncation=False) is None
    tokens = auto_max_batch_tokens(M3, share_mib=share, dtype="float16", flash=True, runtime=TEI_VRAM,
                                   accept_truncation=True)
    assert tokens is not None and AUTO_STEP_TOKENS <= tokens < 8192


def test_nothing_fits_a_tiny_share():
    assert auto_max_batch_tokens(M3, share_mib=500, dtype="float16", flash=True, runtime=TEI_VRAM,
                                 accept_truncation=True) is None


def test_cpu_auto_is_one_full_length_input():
    assert cpu_auto_max_batch_tokens(M3) == 8192
    assert cpu_auto_max_batch_tokens(MINILM) == 1024
