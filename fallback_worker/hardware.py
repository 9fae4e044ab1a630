"""What this process may use: CPU threads within the container's quota, and the dtype to run in."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, else v1 cfs files); None when unlimited."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for base in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((base / "cpu.cfs_quota_us").read_text())
            period_us = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
        return None
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on: affinity, capped by the quota (os.cpu_count() sees the host)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def torch_threads(root: Path = CGROUP_ROOT) -> int:
    """Intra-op threads: OMP_NUM_THREADS when the operator set it, else every usable core."""
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return usable_cpus(root)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU has bfloat16 matmul instructions (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


# bfloat16 must beat float32 by this much to be chosen on its own: it also rounds the weights.
BF16_MIN_GAIN = 1.1


def bf16_matmul_gain(threads: int | None = None, repeats: int = 5) -> float:
    """bfloat16 over float32 matmul throughput on this CPU, measured (about 0.1 s).

    The instruction flags do not say which is faster. On an AMD EPYC with AVX-512 BF16, OpenVINO
    ran the benchmark model 1.8x faster in bfloat16 than in float32; on an Intel Xeon VM with
    AVX-512 BF16 but no AMX, bfloat16 matmuls ran at 0.55-0.65x float32 and the model at
    0.6-0.85x. The shape is a small encoder's feed-forward on a batch of short inputs; the best of
    a few interleaved tries is kept, so a neighbour's burst on a shared host does not decide it.
    """
    import time

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or torch_threads())
    try:
        pairs = {dt: (torch.randn(256, 768, dtype=dt), torch.randn(768, 3072, dtype=dt))
                 for dt in (torch.float32, torch.bfloat16)}
        times: dict[torch.dtype, list[float]] = {dt: [] for dt in pairs}
        for _ in range(repeats + 1):  # the first try of each warms its kernels up and is dropped
            for dt, (a, b) in pairs.items():
                began = time.perf_counter()
                torch.mm(a, b)
                times[dt].append(time.perf_counter() - began)
        best = {dt: min(t[1:]) for dt, t in times.items()}
        return best[torch.float32] / best[torch.bfloat16]
    finally:
        torch.set_num_threads(before)


def default_dtype(device: str, flags: set[str] | None = None, bf16_gain: float | None = None) -> tuple[str, str]:
    """The dtype to run in when none is asked for, and why: TEI's float16 on CUDA; on CPU bfloat16
    where it has the instructions and they measure faster than float32 (``bf16_gain``, measured
    when not given), else float32."""
    if device.startswith("cuda"):
        return "float16", "TEI's default on CUDA"
    if not cpu_has_native_bf16(flags):
        return "float32", "no bfloat16 instructions on this CPU"
    gain = bf16_matmul_gain() if bf16_gain is None else bf16_gain
    if gain >= BF16_MIN_GAIN:
        return "bfloat16", f"bfloat16 matmuls measured {gain:.2f}x float32 here"
    return "float32", f"this CPU has bfloat16 instructions, but its matmuls measured {gain:.2f}x float32"
