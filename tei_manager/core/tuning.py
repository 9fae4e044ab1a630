"""The VRAM model: how much GPU memory one instance needs, and the `auto` batch-token budget.

    total = weights + activations + context

    weights      = params x dtype_bytes
    activations  = max_batch_tokens x dtype_bytes x hidden_size x (ACT_PEAK_WIDTHS + ACT_WIDTHS_PER_LAYER x layers)
                   + (padded attention only) max_batch_tokens x L x heads x dtype_bytes x ATTN_SCORE_COPIES,
                     L = min(max_input_length, max_batch_tokens)
                   x FALLBACK_ACTIVATION_FACTOR for the fallback worker (PyTorch's caching allocator)
    context      = CUDA context + library workspaces, a constant per runtime

Why this shape (docs/vram-model.md has the long version):

* TEI warms up with one forward of exactly `max_batch_tokens` tokens and then "allocates only
  ~10-20MB more than during warmup" (TEI PR #775), so the peak is set by `max_batch_tokens`, not
  by traffic: linear in it for unpadded (flash-attention) batches.
* Inference keeps no activations for a backward pass, so the per-token peak is a handful of
  hidden-size-wide tensors of the layer being run (QKV, attention output, the 4x FFN
  intermediate before and after GELU, residual and layer-norm copies: ACT_PEAK_WIDTHS) plus a
  smaller share that grows with depth (allocator blocks kept between layers: ACT_WIDTHS_PER_LAYER).
* Without flash attention (TEI's Turing image, padded batches) the attention scores
  heads x L x L per sequence are materialised as well.

The constants are first estimates from the architecture, sized to agree with seed 004's table
("embedding 1-3 GB + 0.5-1 GB for batching" on an L20).  They are to be calibrated by
measurement: start an instance, read NVML's used memory after warmup, fit the constants
(benchmarks/ will hold the script and docs/vram-model.md the numbers).

Pure core: standard library and tei_manager.core only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from tei_manager.core.catalog import ModelInfo
from tei_manager.core.plan import VramEstimate

MIB = 1024 * 1024

DTYPE_BYTES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}

# --- activation constants (to be calibrated by measurement; see module docstring) ---------------
#: Hidden-size-wide tensors alive at once inside one layer's forward pass, per token.
ACT_PEAK_WIDTHS = 16
#: Extra hidden-size-wide tensors per token per layer kept by the allocator between layers.
ACT_WIDTHS_PER_LAYER = 1.0
#: Copies of the attention score matrix alive at once when attention is padded (scores + softmax).
ATTN_SCORE_COPIES = 2
#: PyTorch's caching allocator rounds and keeps blocks: the fallback worker needs more than TEI.
FALLBACK_ACTIVATION_FACTOR = 1.25

# --- per-process constants ------------------------------------------------------------------------
#: CUDA context, cuBLAS workspace and kernels of a TEI (candle) process.
TEI_CONTEXT_MIB = 512
#: CUDA context of a PyTorch process (larger kernel images) plus allocator slack.
FALLBACK_CONTEXT_MIB = 1024



class CalibrationKey(NamedTuple):
    """What a measured peak is for: an instance's exact model, runtime, dtype, batch budget and device
    (``cpu`` or the GPU's name). Equal to the calibration store's keys (tei_manager.tune.calibration)."""

    model: str
    runtime: str
    dtype: str
    max_batch_tokens: int
    device: str


@dataclass(frozen=True)
class MeasuredPeak:
    peak_bytes: int
    measured_at: str | None = None


#: What the planning service hands the planner: measured peaks by key.
Calibration = Mapping[CalibrationKey, MeasuredPeak]


@dataclass(frozen=True)
class VramProfile:
    """What one runtime adds to the architecture's memory: its per-process context and how much its
    allocator inflates activations.  Each runtime (tei_manager.runtimes) owns one."""

    context_mib: int
    activation_factor: float = 1.0


TEI_VRAM = VramProfile(context_mib=TEI_CONTEXT_MIB)
FALLBACK_VRAM = VramProfile(context_mib=FALLBACK_CONTEXT_MIB, activation_factor=FALLBACK_ACTIVATION_FACTOR)

# --- the `auto` search -------------------------------------------------------------------------------
#: `auto` budgets are multiples of this many tokens.
AUTO_STEP_TOKENS = 1024
#: Past this an encoder batch is compute bound on every GPU we target; a bigger budget only
#: makes requests queue behind longer batches.
AUTO_MAX_BATCH_TOKENS = 65536


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def default_dtype(*, on_gpu: bool, override: str | None) -> str:
    """The precision an instance runs at: the profile's `dtype`, else TEI's default for the device.

    TEI (candle/CUDA) defaults to float16 on GPUs and float32 on CPU; the fallback worker follows it.
    """
    if override is not None:
        return override
    return "float16" if on_gpu else "float32"


def round_up(value: int, step: int = AUTO_STEP_TOKENS) -> int:
    return int(math.ceil(value / step) * step)


def estimate_vram(info: ModelInfo, *, dtype: str, max_batch_tokens: int, flash: bool,
                  runtime: VramProfile) -> VramEstimate:
    """The VRAM one instance needs at its warmup peak, in MiB (see the module docstring)."""
    size = dtype_bytes(dtype)
    weights = info.params * size
    per_token = size * info.hidden_size * (ACT_PEAK_WIDTHS + ACT_WIDTHS_PER_LAYER * info.num_layers)
    activations = max_batch_tokens * per_token
    if not flash:
        seq = min(info.max_input_length, max_batch_tokens)
        activations += max_batch_tokens * seq * info.num_heads * size * ATTN_SCORE_COPIES
    activations *= runtime.activation_factor
    context = runtime.context_mib
    weights_mib = math.ceil(weights / MIB)
    activations_mib = math.ceil(activations / MIB)
    return VramEstimate(
        weights_mib=weights_mib,
        activations_mib=activations_mib,
        context_mib=context,
        total_mib=weights_mib + activations_mib + context,
        dtype=dtype,
        max_batch_tokens=max_batch_tokens,
    )


def min_batch_tokens(info: ModelInfo, *, accept_truncation: bool) -> int:
    """The smallest budget `auto` may pick: the model's max input length (rounded up to a step),
    or one step when the profile accepts truncating long inputs."""
    if accept_truncation:
        return min(AUTO_STEP_TOKENS, round_up(info.max_input_length))
    return round_up(info.max_input_length)


def largest_fitting(info: ModelInfo, *, share_mib: int, dtype: str, flash: bool, runtime: VramProfile,
                    floor: int = AUTO_STEP_TOKENS, cap: int = AUTO_MAX_BATCH_TOKENS) -> int | None:
    """The largest multiple of AUTO_STEP_TOKENS in [floor, cap] whose estimate fits `share_mib`.

    None when even `floor` does not fit.  The estimate grows monotonically with the budget, so a
    binary search over the steps finds it.
    """
    lo, hi = math.ceil(floor / AUTO_STEP_TOKENS), cap // AUTO_STEP_TOKENS
    if lo > hi:
        return None

    def fits(steps: int) -> bool:
        estimate = estimate_vram(info, dtype=dtype, max_batch_tokens=steps * AUTO_STEP_TOKENS,
                                 flash=flash, runtime=runtime)
        return estimate.total_mib <= share_mib

    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo * AUTO_STEP_TOKENS


def auto_max_batch_tokens(info: ModelInfo, *, share_mib: int, dtype: str, flash: bool, runtime: VramProfile,
                          accept_truncation: bool) -> int | None:
    """What `max_batch_tokens: auto` becomes on a GPU for an instance given `share_mib` of VRAM.

    The largest multiple of AUTO_STEP_TOKENS (at most AUTO_MAX_BATCH_TOKENS) that fits, and never
    below the model's max input length unless `accept_truncation`.  None when nothing fits: the
    planner turns that into an OvercommitError.
    """
    floor = min_batch_tokens(info, accept_truncation=accept_truncation)
    return largest_fitting(info, share_mib=share_mib, dtype=dtype, flash=flash, runtime=runtime,
                           floor=floor, cap=max(AUTO_MAX_BATCH_TOKENS, floor))


def cpu_auto_max_batch_tokens(info: ModelInfo) -> int:
    """`auto` on CPU: the model's max input length rounded up to a step.

    CPU batches are padded and compute bound early; a bigger budget adds latency, not throughput.
    """
    return round_up(info.max_input_length)
