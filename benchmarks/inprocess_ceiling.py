"""The model alone, in a process of its own: the ceiling a server on the same CPU can approach, and
the bfloat16-to-float32 accuracy check. Run by worker_vs_infinity.py; prints one JSON object.

    python3 benchmarks/inprocess_ceiling.py --kind embed --model DIR --inputs inputs.json --seconds 8 \
        --traffic 1x16 32x1

Ceiling: each pass tokenizes every input (the fallback worker's tokenizer, truncating), sorts them
by length and runs batches of `--batch` through the model in `--dtype`, one batch at a time with all
of the CPU's threads, in the worker's engine (`--engine`: torch, openvino, or auto as the worker
picks); inputs/s over `--seconds` after one warm-up pass. For `rerank` an input is a
(query, document) pair. It runs in its own process so that the torch threads it leaves behind
never share the CPU with the servers measured after it.

Traffic ceilings (`--traffic CLIENTSxINPUTS ...`): the model behind the worker's own batcher and
forward threads, with the worker's settings, fed one scenario's requests as the load generator
sends them (the same inputs, in the same order, from as many closed-loop clients), tokenized
beforehand and with no HTTP or JSON. That is what the server could do on this traffic if serving a
request cost nothing: one client's 16 inputs cannot be sorted together with anybody else's, so
their padding and the two forward threads' uneven halves are part of it, which the length-sorted
ceiling above does not see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker sets it (fallback_worker/cli.py)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


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


def ceiling(engine: Any, inputs: list[Any], batch: int, seconds: float) -> float:
    """Inputs/s of the model alone."""
    one_pass(engine, inputs, batch)  # warm-up: every shape once
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += one_pass(engine, inputs, batch)
    return done / (time.perf_counter() - began)


def request_inputs(kind: str, texts: list[str], queries: list[str], per_request: int) -> Callable[[int], list[Any]]:
    """The inputs of the load generator's i-th request (peer_servers' body makers, decoded)."""
    from peer_servers import embed_body, rerank_body

    make = embed_body(texts, per_request) if kind == "embed" else rerank_body("worker", queries, texts, per_request)

    def inputs(i: int) -> list[Any]:
        body = json.loads(make(i)[0])
        return list(body["input"]) if kind == "embed" else [(body["query"], text) for text in body["texts"]]

    return inputs


def traffic_ceiling(engine: Any, kind: str, texts: list[str], queries: list[str], scenario: str,
                    seconds: float, warmup: float) -> float:
    """Inputs/s of the worker's batcher and engine alone on one scenario's closed-loop traffic."""
    from fallback_worker.config import WorkerConfig
    from fallback_worker.server import App

    clients, per_request = (int(n) for n in scenario.split("x"))
    batcher = App(engine, WorkerConfig(model_id="model"), tokenization_workers=1).batcher  # the worker's settings
    task = engine.task_for_model()
    inputs_of = request_inputs(kind, texts, queries, per_request)
    tokenized: dict[str, Any] = {}

    def encoded(i: int) -> Any:
        given = inputs_of(i)
        key = json.dumps(given)
        if key not in tokenized:
            tokenized[key] = engine.tokenizer.encode(given, truncate=True)
        return tokenized[key]

    async def run() -> float:
        began = time.perf_counter()
        measure_from, stop_at = began + warmup, began + warmup + seconds
        done = 0

        async def client(c: int) -> None:
            nonlocal done
            i = c * 7919  # each client starts where the load generator's connection c does
            while time.perf_counter() < stop_at:
                batch = encoded(i)
                i += 1
                sent = time.perf_counter()
                await asyncio.gather(*(job.future for job in batcher.submit(task, batch)))
                if sent >= measure_from:
                    done += len(batch)

        batcher.start(asyncio.get_running_loop())
        try:
            await asyncio.gather(*(client(c) for c in range(clients)))
        finally:
            batcher.stop()
        return done / (time.perf_counter() - measure_from)

    for i in range(clients * 4):  # tokenize the first requests before the clock starts
        encoded(i)
    return asyncio.run(run())


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
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="what the ceilings run in (the accuracy check is bfloat16 against float32)")
    ap.add_argument("--traffic", nargs="*", default=[], metavar="CLIENTSxINPUTS",
                    help="scenarios to measure the batcher and engine alone on (see above)")
    ap.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each traffic scenario")
    args = ap.parse_args()
    given = json.loads(args.inputs.read_text())
    inputs = model_inputs(args.kind, given["texts"], given["queries"])
    engine = load(args.model, args.dtype, args.engine)
    result: dict[str, Any] = {
        "inputs_per_s": ceiling(engine, inputs, args.batch, args.seconds),
        "batch": args.batch,
        "engine": args.engine,
        "dtype": args.dtype,
    }
    if args.traffic:
        result["traffic"] = {
            scenario: traffic_ceiling(engine, args.kind, given["texts"], given["queries"], scenario,
                                      args.seconds, args.warmup)
            for scenario in args.traffic
        }
    # Last: it loads torch float32 next to the engine, whose threads must not share the CPU with
    # the figures above.
    del engine
    result["accuracy"] = accuracy(args.model, args.kind, inputs, args.engine)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
