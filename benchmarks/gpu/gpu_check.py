"""The GPU check: the fallback worker in FP16 on bge-m3- and bge-reranker-v2-m3-shaped models.

    benchmarks/gpu/fetch_wheels.sh                      # here, once: wheels the GPU image lacks
    python3 benchmarks/gpu/gpu_check.py --out DIR       # there: <= 10 minutes, no network

What it does, in one process tree, with nothing else on the GPU:

1. Builds two models with random weights from the real configs of BAAI/bge-m3 (XLM-RoBERTa,
   568 M parameters, CLS pooling, 8192 positions) and BAAI/bge-reranker-v2-m3 (the same encoder
   with a one-label classification head), saved in float16 as a hub checkout would look. Random
   weights cost the same FLOPs and bytes as the trained ones, so speed and memory carry over.
2. For each `--max-batch-tokens` setting: the in-process ceiling (the model alone, length-sorted
   batches cut under that budget, tokenization included, one forward at a time) with its peak
   PyTorch memory, then the worker as a server at that setting under closed-loop load: inputs/s,
   p50/p99 and the process's peak GPU memory from NVML, beside the planner's VRAM estimate for the
   same model, dtype and budget (`tei_manager.core.tuning.estimate_vram`).
3. Writes `gpu_check.json` (every figure) and `gpu_check.md` (a short table) into `--out`.

Texts are synthetic with a RAG-like length mix (queries of ~16-32 tokens, passages of ~64-512),
built from a small vocabulary: lengths, not words, set the cost of an encoder.

`--smoke` runs the same steps on tiny models, on whatever device is there, in about a minute:
that is how the script itself is checked on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]

from shaped_models import BGE_M3_CONFIG, SMOKE_CONFIG, build_model  # noqa: E402 - after the sys.path line
from peer_servers import stop, wait_ready  # noqa: E402
from worker_loadgen import Result, run_load  # noqa: E402

MIB = 1024 * 1024

CATALOG_KEY = {"embed": "BAAI/bge-m3", "rerank": "BAAI/bge-reranker-v2-m3"}


@dataclass
class Scenario:
    name: str
    route: str
    concurrency: int
    inputs_per_request: int


EMBED_SCENARIOS = (
    Scenario("1 client x 1 input", "/embed", 1, 1),
    Scenario("64 clients x 1 input", "/embed", 64, 1),
    Scenario("16 clients x 32 inputs", "/embed", 16, 32),
)
RERANK_SCENARIOS = (
    Scenario("1 client x 32 documents", "/rerank", 1, 32),
    Scenario("16 clients x 32 documents", "/rerank", 16, 32),
)


@dataclass
class SettingResult:
    model: str
    max_batch_tokens: int
    estimate_mib: int | None = None
    ceiling_inputs_per_s: float | None = None
    ceiling_peak_mib: float | None = None
    server_peak_mib: float | None = None
    server_start_s: float | None = None
    scenarios: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


# ---- models -------------------------------------------------------------------------------------
def texts_with_lengths(lengths: list[int]) -> list[str]:
    """One text per wanted length, in tokens of the trained tokenizer (whole words, ~1 token each)."""
    from fixtures.tiny_models import corpus

    words = " ".join(corpus()).split()
    rng = random.Random(7)
    out = []
    for n in lengths:
        start = rng.randrange(len(words))
        out.append(" ".join(words[(start + i) % len(words)] for i in range(max(1, n))))
    return out


def rag_lengths(count: int, *, low: int, high: int, seed: int) -> list[int]:
    """Log-uniform lengths in [low, high]: many short texts, a tail of long ones."""
    import math

    rng = random.Random(seed)
    return [int(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(count)]


# ---- in-process ceiling -------------------------------------------------------------------------
def ceiling(model_dir: Path, kind: str, texts: list[str], queries: list[str], max_batch_tokens: int,
            device: str, seconds: float) -> tuple[float, float | None]:
    """Inputs/s of the model alone (tokenize + length-sorted budgeted batches) and its peak MiB."""
    import torch

    from fallback_worker.engine import Engine

    engine = Engine.load(str(model_dir), dtype="float16" if device.startswith("cuda") else "float32",
                         device=device, max_batch_tokens=max_batch_tokens)
    inputs: list[Any] = texts if kind == "embed" else [(queries[i % len(queries)], t) for i, t in enumerate(texts)]

    def encode() -> list[Any]:
        return engine.tokenizer.encode(inputs, truncate=True)

    def batches(encoded: list[Any]) -> Iterator[list[Any]]:
        encoded = sorted(encoded, key=lambda e: len(e.ids))
        batch: list[Any] = []
        for enc in encoded:
            if batch and (len(batch) + 1) * len(enc.ids) > max_batch_tokens:
                yield batch
                batch = []
            batch.append(enc)
        if batch:
            yield batch

    task = engine.task_for_model()
    for batch in batches(encode()):  # warm-up: every shape once
        engine.run(task, batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for batch in batches(encode()):
            engine.run(task, batch)
            done += len(batch)
    rate = done / (time.perf_counter() - began)
    peak = torch.cuda.max_memory_reserved() / MIB if device.startswith("cuda") else None
    return rate, peak  # the engine goes with this frame; check_one empties the CUDA cache


def release_cuda_cache(device: str) -> None:
    """Give cached blocks back, so the next server's NVML figure is its own."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def accuracy(model_dir: Path, kind: str, texts: list[str], queries: list[str], device: str) -> dict[str, float]:
    """float16 against float32 on the same inputs: min cosine (embed) or max sigmoid-score gap (rerank)."""
    import numpy as np

    from fallback_worker.engine import Engine, sigmoid

    sample, outputs = texts[:128], {}
    for dtype in ("float16", "float32"):
        engine = Engine.load(str(model_dir), dtype=dtype, device=device)
        inputs: list[Any] = sample if kind == "embed" else [(queries[i % len(queries)], t) for i, t in enumerate(sample)]
        encoded = engine.tokenizer.encode(inputs, truncate=True)
        outputs[dtype] = np.concatenate([np.asarray(engine.run(engine.task_for_model(), encoded[i : i + 16]))
                                         for i in range(0, len(encoded), 16)])
        del engine
        release_cuda_cache(device)
    a, b = outputs["float16"], outputs["float32"]
    if kind == "embed":
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"fp16_vs_fp32_min_cosine": round(float(cos.min()), 6)}
    return {"fp16_vs_fp32_max_score_diff": round(float(np.abs(sigmoid(a) - sigmoid(b)).max()), 6)}


# ---- the worker as a server ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GpuMemoryWatch:
    """Samples the worker's GPU memory through NVML every 50 ms and keeps the peak.

    Per-process figures where the driver reports them (not under every sandbox); otherwise the
    device's used memory minus what was used before the worker started (nothing else runs here).
    """

    def __init__(self, pid: int, gpu_index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self._baseline = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        self.pid = pid
        self.peak_mib = 0.0
        self.source = "device used memory minus the baseline"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> float:
        nvml = self._nvml
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == self.pid and proc.usedGpuMemory:
                    self.source = "NVML per-process used memory"
                    return float(proc.usedGpuMemory) / MIB
        except nvml.NVMLError:
            pass
        return (nvml.nvmlDeviceGetMemoryInfo(self._handle).used - self._baseline) / MIB

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._sample())
            self._stop.wait(0.05)

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


@contextmanager
def worker(model_dir: Path, port: int, max_batch_tokens: int, device: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    dtype = "float16" if device.startswith("cuda") else "float32"
    cmd = [sys.executable, "-m", "fallback_worker", "--model-id", str(model_dir), "--hostname", "127.0.0.1",
           "--port", str(port), "--dtype", dtype, "--device", device, "--max-batch-tokens", str(max_batch_tokens),
           "--max-client-batch-size", "64", "--max-concurrent-requests", "4096"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        stop(proc)


def body_maker(scenario: Scenario, texts: list[str], queries: list[str]) -> Callable[[int], tuple[bytes, int]]:
    n = scenario.inputs_per_request

    def make(i: int) -> tuple[bytes, int]:
        chunk = [texts[(i * n + k) % len(texts)] for k in range(n)]
        if scenario.route == "/rerank":
            return json.dumps({"query": queries[i % len(queries)], "texts": chunk}).encode(), n
        return json.dumps({"inputs": chunk}).encode(), n

    return make


def summarize(result: Result) -> dict[str, float]:
    return {"inputs_per_s": round(result.throughput, 1), "p50_ms": round(result.percentile(50) * 1000, 1),
            "p99_ms": round(result.percentile(99) * 1000, 1), "requests": len(result.latencies),
            "errors": result.errors}


# ---- the check ----------------------------------------------------------------------------------
def vram_estimate(kind: str, max_batch_tokens: int) -> int | None:
    try:
        from tei_manager.core.catalog import KNOWN_MODELS
        from tei_manager.core.tuning import estimate_vram
        from tei_manager.runtimes.registry import get_runtime
    except ImportError as exc:  # pydantic missing: the wheels were not carried
        print(f"  (no VRAM estimate: {exc})", flush=True)
        return None
    info = KNOWN_MODELS[CATALOG_KEY[kind]]
    return estimate_vram(info, dtype="float16", max_batch_tokens=max_batch_tokens, flash=True,
                         runtime=get_runtime("fallback").vram).total_mib


def check_one(kind: str, model_dir: Path, max_batch_tokens: int, args: argparse.Namespace,
              texts: list[str], queries: list[str], workdir: Path) -> SettingResult:
    result = SettingResult(model=CATALOG_KEY[kind], max_batch_tokens=max_batch_tokens,
                           estimate_mib=vram_estimate(kind, max_batch_tokens))
    print(f"\n{result.model} max_batch_tokens={max_batch_tokens} (estimate {result.estimate_mib} MiB)", flush=True)
    try:
        result.ceiling_inputs_per_s, result.ceiling_peak_mib = ceiling(
            model_dir, kind, texts, queries, max_batch_tokens, args.device, args.seconds)
        print(f"  ceiling {result.ceiling_inputs_per_s:.1f} inputs/s, peak {result.ceiling_peak_mib} MiB", flush=True)
        release_cuda_cache(args.device)
        port = free_port()
        log = workdir / f"worker-{kind}-{max_batch_tokens}.log"
        with worker(model_dir, port, max_batch_tokens, args.device, log) as proc:
            watch = GpuMemoryWatch(proc.pid, 0) if args.device.startswith("cuda") else None
            try:
                result.server_start_s = round(wait_ready(proc, port, limit=300, log=log), 1)
                for scenario in EMBED_SCENARIOS if kind == "embed" else RERANK_SCENARIOS:
                    load = asyncio.run(run_load("127.0.0.1", port, scenario.route,
                                                body_maker(scenario, texts, queries),
                                                concurrency=scenario.concurrency, seconds=args.seconds, warmup=1.0))
                    result.scenarios[scenario.name] = summarize(load)
                    print(f"  {scenario.name:<26} {result.scenarios[scenario.name]}", flush=True)
            finally:
                if watch is not None:
                    result.server_peak_mib = round(watch.close(), 1)
                    print(f"  server peak {result.server_peak_mib} MiB ({watch.source})", flush=True)
    except Exception as exc:  # noqa: BLE001 - an OOM or crash marks this setting infeasible, the sweep goes on
        result.error = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"  FAILED: {result.error}", flush=True)
    return result


def markdown(results: list[SettingResult], meta: dict[str, Any]) -> str:
    lines = [f"# GPU check ({meta['device_name']}, {meta['date']})", "",
             f"fallback worker, {meta['dtype']}, torch {meta['torch']}, transformers {meta['transformers']}"
             + (" (smoke run: tiny models; the estimates are for the full-size models)." if meta["smoke"] else "."), "",
             "| model | max_batch_tokens | scenario | inputs/s | server / ceiling | p50 ms | p99 ms | peak MiB (server) | estimate MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.model} | {r.max_batch_tokens} | failed: {r.error.splitlines()[0]} | | | | | | {r.estimate_mib} |")
            continue
        for name, s in r.scenarios.items():
            ratio = s["inputs_per_s"] / r.ceiling_inputs_per_s if r.ceiling_inputs_per_s else float("nan")
            lines.append(f"| {r.model} | {r.max_batch_tokens} | {name} | {s['inputs_per_s']} | {ratio:.2f} | "
                         f"{s['p50_ms']} | {s['p99_ms']} | {r.server_peak_mib} | {r.estimate_mib} |")
    lines += ["", "Ceiling: the model alone in-process at the same budget (inputs/s): "
              + ", ".join(f"{r.model.split('/')[-1]}@{r.max_batch_tokens}={r.ceiling_inputs_per_s:.0f}"
                          for r in results if r.ceiling_inputs_per_s), "",
              "Accuracy (float16 against float32, random weights): "
              + ", ".join(f"{m.split('/')[-1]} {v}" for m, v in meta["accuracy"].items()), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where gpu_check.json and gpu_check.md go")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tei-manager-gpu-check"))
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--embed-tokens", default="4096,8192,16384,32768,65536",
                    help="max-batch-tokens settings for the embedder")
    ap.add_argument("--rerank-tokens", default="8192,16384,32768", help="settings for the reranker")
    ap.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    ap.add_argument("--budget-s", type=float, default=540, help="settings not started within this are skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny models and short runs: checks the script itself")
    args = ap.parse_args()

    import torch
    import transformers

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = SMOKE_CONFIG if args.smoke else BGE_M3_CONFIG
    if args.smoke:
        args.embed_tokens, args.rerank_tokens, args.seconds = "512,1024", "1024", min(args.seconds, 2.0)
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir / ("smoke" if args.smoke else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    max_len = min(512, int(config["max_position_embeddings"]) - 2)
    texts = texts_with_lengths(rag_lengths(512, low=64, high=max_len, seed=1))
    queries = texts_with_lengths(rag_lengths(64, low=16, high=32, seed=2))

    results: list[SettingResult] = []
    accuracies: dict[str, dict[str, float]] = {}
    for kind, settings in (("embed", args.embed_tokens), ("rerank", args.rerank_tokens)):
        print(f"building the {CATALOG_KEY[kind]}-shaped model ...", flush=True)
        model_dir = build_model(workdir / kind, kind, config, args.device)
        accuracies[CATALOG_KEY[kind]] = accuracy(model_dir, kind, texts, queries, args.device)
        print(f"  {accuracies[CATALOG_KEY[kind]]}", flush=True)
        for tokens in (int(t) for t in settings.split(",")):
            if time.monotonic() - began > args.budget_s:
                results.append(SettingResult(model=CATALOG_KEY[kind], max_batch_tokens=tokens,
                                             error="skipped: over the time budget"))
                continue
            results.append(check_one(kind, model_dir, tokens, args, texts, queries, workdir))

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "dtype": "float16" if args.device.startswith("cuda") else "float32",
        "torch": torch.__version__, "transformers": transformers.__version__, "smoke": args.smoke,
        "seconds_per_measurement": args.seconds, "elapsed_s": round(time.monotonic() - began, 1),
        "accuracy": accuracies,
        "text_tokens": {"median": statistics.median(rag_lengths(512, low=64, high=max_len, seed=1))},
    }
    (args.out / "gpu_check.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                                                        indent=2))
    (args.out / "gpu_check.md").write_text(markdown(results, meta))
    print("\n" + markdown(results, meta), flush=True)
    return 1 if all(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
