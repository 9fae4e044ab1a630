"""The model alone on this CPU in two engines: the worker's (torch, unpadded, bfloat16) and OpenVINO.

    pip install openvino            # not a dependency of the project; this script only
    PYTHONPATH=$PWD python3 benchmarks/engine_ceiling.py --rounds 2 --out engines.json

What it measures, in one process and alternating rounds (medians, min-max):

- throughput of the model alone on the benchmark texts (benchmarks/bench_texts.py, 512 RAG texts
  of 8-64 words), length-sorted batches of 32, all of the CPU's threads: torch through
  fallback_worker's Engine (unpadded bfloat16, what the worker serves with) and OpenVINO compiled
  from the same Hugging Face model with `INFERENCE_PRECISION_HINT` bf16 and f32 (padded batches:
  OpenVINO gets a [batch, longest] tensor);
- the latency of one input alone (torch on one thread, as the worker runs a lone small batch;
  OpenVINO on one and on two threads);
- accuracy: the smallest cosine of each engine's mean-pooled embeddings to torch float32.

It answers issue 12's question "if torch on CPU cannot get there, measure other engines against
the same ceiling and accuracy bar before choosing"; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker sets it
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_texts import rag_texts  # noqa: E402

from fallback_worker.engine import Engine  # noqa: E402
from fallback_worker.tokenization import Encoded  # noqa: E402

Embed = Callable[[list[Encoded]], np.ndarray]


def openvino_embedder(model_dir: str, precision: str, threads: int) -> Embed:
    import openvino as ov
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(model_dir).eval()
    example = {name: torch.ones(2, 16, dtype=torch.long) for name in ("input_ids", "attention_mask")}
    example["token_type_ids"] = torch.zeros(2, 16, dtype=torch.long)
    compiled = ov.Core().compile_model(
        ov.convert_model(hf, example_input=example), "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()

    def embed(batch: list[Encoded]) -> np.ndarray:
        longest = max(len(e.ids) for e in batch)
        ids = np.zeros((len(batch), longest), np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(batch):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        hidden = request.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled: np.ndarray = (hidden * weights).sum(1) / weights.sum(1)
        return pooled

    return embed


def torch_embedder(engine: Engine, threads: int) -> Embed:
    def embed(batch: list[Encoded]) -> np.ndarray:
        torch.set_num_threads(threads)
        return engine.embed(batch)

    return embed


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def all_batches(embed: Embed, encoded: list[Encoded], batch: int) -> np.ndarray:
    return np.concatenate([embed(encoded[i : i + batch]) for i in range(0, len(encoded), batch)])


def throughput(embed: Embed, encoded: list[Encoded], batch: int, seconds: float) -> float:
    all_batches(embed, encoded, batch)  # warm-up: every shape once
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        all_batches(embed, encoded, batch)
        done += len(encoded)
    return done / (time.perf_counter() - began)


def one_input_ms(embed: Embed, encoded: list[Encoded], seconds: float) -> float:
    for e in encoded[:5]:
        embed([e])
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        embed([encoded[(n * 37) % len(encoded)]])
        n += 1
    return 1000 * (time.perf_counter() - began) / n


def main() -> int:
    from fixtures.tiny_models import minilm_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a BERT-family embedding model directory (default: all-MiniLM-L6-v2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = args.model or str(minilm_path())
    threads = max(1, torch.get_num_threads())

    engine = Engine.load(model, dtype="bfloat16", device="cpu")
    encoded = sorted(engine.tokenizer.encode(rag_texts(512), truncate=True), key=lambda e: len(e.ids))
    reference = all_batches(Engine.load(model, dtype="float32", device="cpu").embed, encoded, args.batch)
    engines: dict[str, Embed] = {
        "torch-unpadded-bf16": torch_embedder(engine, threads),
        "openvino-bf16": openvino_embedder(model, "bf16", threads),
        "openvino-f32": openvino_embedder(model, "f32", threads),
    }
    lone: dict[str, Embed] = {
        "torch-unpadded-bf16 (1 thread)": torch_embedder(engine, 1),
        "openvino-bf16 (1 thread)": openvino_embedder(model, "bf16", 1),
        f"openvino-bf16 ({threads} threads)": engines["openvino-bf16"],
    }
    report: dict[str, Any] = {"model": model, "threads": threads, "batch": args.batch, "accuracy": {},
                              "throughput": {k: [] for k in engines}, "one_input_ms": {k: [] for k in lone}}
    for name, embed in engines.items():
        report["accuracy"][name] = min_cosine(all_batches(embed, encoded, args.batch), reference)
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for name in order:
            report["throughput"][name].append(throughput(engines[name], encoded, args.batch, args.seconds))
        for name, embed in lone.items():
            report["one_input_ms"][name].append(one_input_ms(embed, encoded, args.seconds / 2))

    base = statistics.median(report["throughput"]["torch-unpadded-bf16"])
    print(f"model alone, {threads} threads, sorted batches of {args.batch}, {args.rounds} alternating rounds")
    for name, values in report["throughput"].items():
        med = statistics.median(values)
        print(f"  {name:24s} {med:7.1f} inputs/s [{min(values):.1f}-{max(values):.1f}]  "
              f"x{med / base:.2f} of torch  min cosine to fp32 {report['accuracy'][name]:.5f}")
    print("one input alone")
    for name, values in report["one_input_ms"].items():
        print(f"  {name:32s} {statistics.median(values):6.2f} ms [{min(values):.2f}-{max(values):.2f}]")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
