"""The model alone, in a process of its own: the ceiling a server on the same CPU can approach, and
the bfloat16-to-float32 accuracy check. Run by worker_vs_infinity.py; prints one JSON object.

    python3 benchmarks/inprocess_ceiling.py --kind embed --model DIR --inputs inputs.json --seconds 8

Ceiling: each pass tokenizes every input (the fallback worker's tokenizer, truncating), sorts them
by length and runs batches of `--batch` through the model in bfloat16, one batch at a time with all
of the CPU's threads, in the worker's engine (`--engine`: torch, openvino, or auto as the worker
picks); inputs/s over `--seconds` after one warm-up pass. For `rerank` an input is a
(query, document) pair. It runs in its own process so that the torch threads it leaves behind
never share the CPU with the servers measured after it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker sets it (fallback_worker/cli.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]


def model_inputs(kind: str, texts: list[str], queries: list[str]) -> list[Any]:
    """Texts to embed, or (query, document) pairs to score."""
    if kind == "embed":
        return list(texts)
    return [(queries[i % len(queries)], text) for i, text in enumerate(texts)]


def one_pass(engine: Any, inputs: list[Any], batch: int) -> int:
    """Tokenize, sort by length, run every batch; returns the inputs done."""
    encoded = sorted(engine.tokenizer.encode(inputs, truncate=True), key=lambda e: len(e.ids))
    task = engine.task_for_model()
    for i in range(0, len(encoded), batch):
        engine.run(task, encoded[i : i + batch])
    return len(encoded)


def load(model: str, dtype: str, engine: str) -> Any:
    """The model as the worker loads it for ``--engine``."""
    from fallback_worker.config import WorkerConfig, default_openvino_cache
    from fallback_worker.loading import load_engine

    return load_engine(WorkerConfig(model_id=model, dtype=dtype, device="cpu", engine=engine,
                                    openvino_cache_dir=str(default_openvino_cache())))


def ceiling(model: str, inputs: list[Any], batch: int, seconds: float, engine_name: str) -> float:
    """Inputs/s of the bfloat16 model alone."""
    engine = load(model, "bfloat16", engine_name)
    one_pass(engine, inputs, batch)  # warm-up: every shape once
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += one_pass(engine, inputs, batch)
    return done / (time.perf_counter() - began)


def outputs(model: str, dtype: str, inputs: list[Any], engine_name: str) -> Any:
    """Embeddings (rows) or relevance scores (sigmoid of the logit, as a client sees them)."""
    import numpy as np

    from fallback_worker.engine import sigmoid

    engine = load(model, dtype, engine_name)
    encoded = engine.tokenizer.encode(inputs, truncate=True)
    task = engine.task_for_model()
    out = np.concatenate([np.asarray(engine.run(task, encoded[i : i + 32])) for i in range(0, len(encoded), 32)])
    return out if task == "embed" else sigmoid(out[:, 0])


def accuracy(model: str, kind: str, inputs: list[Any], engine: str) -> dict[str, float]:
    """Embed: the lowest cosine of the engine's bfloat16 rows to torch's float32 ones. Rerank: the
    largest score difference."""
    import numpy as np

    low, full = outputs(model, "bfloat16", inputs, engine), outputs(model, "float32", inputs, "torch")
    if kind == "embed":
        cos = (low * full).sum(1) / (np.linalg.norm(low, axis=1) * np.linalg.norm(full, axis=1))
        return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    diff = np.abs(low - full)
    return {"max_score_diff": float(diff.max()), "mean_score_diff": float(diff.mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("embed", "rerank"), required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", type=Path, required=True, help='JSON {"texts": [...], "queries": [...]}')
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--engine", choices=("auto", "torch", "openvino"), default="auto")
    args = ap.parse_args()
    given = json.loads(args.inputs.read_text())
    inputs = model_inputs(args.kind, given["texts"], given["queries"])
    result = {
        "inputs_per_s": ceiling(args.model, inputs, args.batch, args.seconds, args.engine),
        "batch": args.batch,
        "engine": args.engine,
        "accuracy": accuracy(args.model, args.kind, inputs, args.engine),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
