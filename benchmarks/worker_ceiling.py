"""How close the server gets to the model alone, plus BF16 accuracy and rerank throughput.

    python3 benchmarks/worker_ceiling.py

1. Ceiling: the packaged all-MiniLM-L6-v2 forward pass in this process, inputs pre-tokenized and
   sorted by length, at the best of several batch sizes (inputs/s). One pass at a time with all
   torch threads, as the worker ran before it had two forward threads on CPU; the server can now
   exceed it.
2. Server: the same model behind `python -m fallback_worker`, loaded by the closed-loop generator at
   concurrency 32 x 16 inputs per request on /v1/embeddings. Goal: server / ceiling >= 0.8.
3. Accuracy: cosine of bfloat16 to float32 embeddings over the benchmark corpus (goal >= 0.995).
4. Rerank: /rerank through --rerank-mode bi-encoder (query + 16 texts) at concurrency 1 and 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the worker's own default; see fallback_worker/cli.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_texts import corpus
from peer_servers import free_port, start_worker, stop, wait_ready
from worker_loadgen import openai_body, run_load


def ceiling(model: str, texts: list[str], seconds: float) -> tuple[dict[int, float], float]:
    import numpy as np

    from fallback_worker.engine import Engine

    bf16 = Engine.load(model, dtype="bfloat16", device="cpu")
    encoded = sorted(bf16.tokenizer.encode(texts, truncate=True), key=lambda e: len(e.ids))
    rates: dict[int, float] = {}
    for batch in (8, 16, 32, 64, 128):
        bf16.embed(encoded[:batch])
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            for i in range(0, len(encoded), batch):
                bf16.embed(encoded[i : i + batch])
                done += len(encoded[i : i + batch])
        rates[batch] = done / (time.perf_counter() - began)
        print(f"  in-process batch {batch:<4} {rates[batch]:8.1f} inputs/s", flush=True)
    fp32 = Engine.load(model, dtype="float32", device="cpu")
    a, b = bf16.embed(encoded), fp32.embed(encoded)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return rates, float(cos.min())


def rerank_body(texts: list[str], batch: int):
    def make(i: int) -> tuple[bytes, int]:
        start = (i * batch) % len(texts)
        chunk = [texts[(start + k) % len(texts)] for k in range(batch)]
        return json.dumps({"query": texts[(i * 31) % len(texts)], "texts": chunk}).encode(), batch

    return make


def main() -> int:
    from fixtures.tiny_models import minilm_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(minilm_path()))
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    texts = corpus()

    print("ceiling (model alone, sorted, bfloat16):", flush=True)
    rates, min_cos = ceiling(args.model, texts, args.seconds / 3)
    best_batch = max(rates, key=rates.get)  # type: ignore[arg-type]
    print(f"bf16 vs fp32: min cosine {min_cos:.5f} over {len(texts)} inputs", flush=True)

    port = free_port()
    proc = start_worker(args.model, port, ["--rerank-mode", "bi-encoder"])
    try:
        wait_ready(proc, port, "/health")
        server = asyncio.run(run_load("127.0.0.1", port, "/v1/embeddings", openai_body(texts, "m", 16), concurrency=32, seconds=args.seconds))
        print(f"server c=32 b=16: {server.throughput:8.1f} inputs/s  p50 {server.percentile(50)*1000:.1f} ms  "
              f"p99 {server.percentile(99)*1000:.1f} ms", flush=True)
        rerank = {}
        for conc in (1, 32):
            r = asyncio.run(run_load("127.0.0.1", port, "/rerank", rerank_body(texts, 16), concurrency=conc, seconds=args.seconds / 2))
            rerank[conc] = r
            print(f"rerank (bi-encoder) c={conc} 16 texts: {r.throughput:8.1f} texts/s  p50 {r.percentile(50)*1000:.1f} ms  "
                  f"p99 {r.percentile(99)*1000:.1f} ms  errors {r.errors}", flush=True)
    finally:
        stop(proc)
    ratio = server.throughput / rates[best_batch]
    print(f"\nserver / ceiling = {server.throughput:.1f} / {rates[best_batch]:.1f} (batch {best_batch}) = {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps({
            "ceiling": rates, "best_batch": best_batch, "server_c32_b16": server.throughput, "ratio": ratio,
            "bf16_min_cosine": min_cos,
            "rerank": {c: {"throughput": r.throughput, "p50_ms": r.percentile(50) * 1000, "p99_ms": r.percentile(99) * 1000} for c, r in rerank.items()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
