"""fallback_worker vs Infinity on the same CPU, model and load generator, in one run.

    python3 -m venv /tmp/infvenv
    /tmp/infvenv/bin/pip install torch==2.13.0 'infinity-emb[server,torch]' 'transformers<5'
    python3 benchmarks/worker_vs_infinity.py --infinity-bin /tmp/infvenv/bin/infinity_emb

(`[torch]` brings sentence-transformers, without which Infinity's torch engine does not start.
Use the CPU build of torch: e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.)

Infinity needs transformers<5, hence its own venv; pass its binary with --infinity-bin or
INFINITY_BIN. Both servers run the packaged all-MiniLM-L6-v2 in bfloat16 and take turns
under load (never loaded at the same time; rounds interleaved), behind the OpenAI embeddings route that both implement, driven by
the same closed-loop generator (benchmarks/worker_loadgen.py). Rerank is not compared: Infinity
reranks with a cross-encoder and there is no comparable real one offline; see worker_ceiling.py for
our own rerank numbers.

Prints, per scenario (concurrency x inputs per request): throughput (inputs/s), p50 and p99
request latency for both, and the throughput ratio. Writes the same as JSON with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from worker_loadgen import Result, openai_body, run_load

ROOT = Path(__file__).resolve().parents[1]


def corpus(n: int = 512) -> list[str]:
    """Deterministic sentences of 4 to ~120 words (a realistic spread of lengths)."""
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not", "but", "what", "all", "when", "there", "can", "more", "if", "no", "out", "so", "said", "up", "its", "about", "into", "than", "them", "only", "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year"]
    out, seed = [], 12345
    for i in range(n):
        seed = (seed * 1103515245 + 12345) % 2**31
        length = 4 + (seed % 24 if i % 4 else seed % 120)
        sent = []
        for _ in range(length):
            seed = (seed * 1103515245 + 12345) % 2**31
            sent.append(words[seed % len(words)])
        out.append(" ".join(sent).capitalize() + ".")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, path: str, limit: float = 600) -> float:
    import httpx

    began = time.monotonic()
    while time.monotonic() - began < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def start_worker(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fallback_worker", "--model-id", model, "--hostname", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16", "--max-client-batch-size", "64", "--max-concurrent-requests", "2048", *extra]
    print("$", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def start_infinity(binary: str, model: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [binary, "v2", "--model-id", model, "--port", str(port), "--host", "127.0.0.1", "--engine", "torch",
           "--device", "cpu", "--dtype", "bfloat16", "--served-model-name", "minilm", "--no-model-warmup", *extra]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def measure(port: int, path: str, texts: list[str], conc: int, batch: int, seconds: float) -> Result:
    return asyncio.run(
        run_load("127.0.0.1", port, path, openai_body(texts, "minilm", batch), concurrency=conc, seconds=seconds)
    )


def summary(results: list[Result]) -> dict[str, float]:
    """Pool the rounds: total inputs over total time, percentiles over every request."""
    pooled = Result()
    for r in results:
        pooled.latencies += r.latencies
        pooled.inputs += r.inputs
        pooled.errors += r.errors
        pooled.seconds += r.seconds
    return {
        "throughput": pooled.throughput,
        "p50_ms": pooled.percentile(50) * 1000,
        "p99_ms": pooled.percentile(99) * 1000,
        "requests": len(pooled.latencies),
        "errors": pooled.errors,
        "rounds": [round(r.throughput, 1) for r in results],
    }


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    from fixtures.tiny_models import minilm_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinity-bin", default=os.environ.get("INFINITY_BIN", "/tmp/infvenv/bin/infinity_emb"))
    ap.add_argument("--model", default=str(minilm_path()))
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round (after 2 s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per scenario and server, interleaved")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--worker-args", default="", help="extra flags for the worker, one string")
    ap.add_argument("--infinity-args", default="", help="extra flags for Infinity, one string")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not Path(args.infinity_bin).exists():
        print(f"no Infinity at {args.infinity_bin}; create it with:\n  python3 -m venv /tmp/infvenv && "
              "/tmp/infvenv/bin/pip install torch==2.13.0 'infinity-emb[server,torch]' 'transformers<5'", file=sys.stderr)
        return 2
    texts = corpus()
    scenarios = [(c, b) for c in args.concurrency for b in args.batch]
    # Both servers stay up for the whole run and take turns, scenario by scenario and round by
    # round (alternating who goes first), so drift in the background load hits both alike.
    servers: dict[str, tuple[subprocess.Popen, int, str]] = {}
    try:
        port = free_port()
        servers["fallback_worker"] = (start_worker(args.model, port, args.worker_args.split()), port, "/v1/embeddings")
        port = free_port()
        servers["infinity"] = (start_infinity(args.infinity_bin, args.model, port, args.infinity_args.split()), port, "/embeddings")
        for name, (proc, port, _) in servers.items():
            print(f"{name}: ready after {wait_ready(proc, port, '/health'):.1f}s", flush=True)
        raw: dict[str, dict[str, list[Result]]] = {name: {} for name in servers}
        for conc, batch in scenarios:
            key = f"c{conc}_b{batch}"
            for rnd in range(args.rounds):
                order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
                for name in order:
                    proc, port, path = servers[name]
                    res = measure(port, path, texts, conc, batch, args.seconds)
                    raw[name].setdefault(key, []).append(res)
                    print(f"  {name:<16} {key:<8} round {rnd}: {res.throughput:8.1f} inputs/s  "
                          f"p50 {res.percentile(50)*1000:7.1f} ms  p99 {res.percentile(99)*1000:7.1f} ms  "
                          f"errors {res.errors}", flush=True)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
    report: dict[str, dict[str, dict[str, object]]] = {
        name: {key: summary(rs) for key, rs in per.items()} for name, per in raw.items()
    }

    print("\nscenario      worker in/s  infinity in/s  ratio   worker p50/p99 ms   infinity p50/p99 ms")
    for key in report["fallback_worker"]:
        w, i = report["fallback_worker"][key], report["infinity"][key]
        ratio = float(w["throughput"]) / float(i["throughput"]) if i["throughput"] else float("inf")
        print(f"{key:<12} {w['throughput']:11.1f} {i['throughput']:14.1f} {ratio:6.2f}x  "
              f"{w['p50_ms']:8.1f}/{w['p99_ms']:<8.1f}  {i['p50_ms']:8.1f}/{i['p99_ms']:<8.1f}")
        report.setdefault("ratio", {})[key] = {"throughput": ratio}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
