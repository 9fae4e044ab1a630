"""fallback_worker vs Infinity on this CPU: embed and rerank, each server alone while measured.

    # once: Infinity 0.0.78 in its own venv (it needs transformers<5), CPU torch, ONNX Runtime
    python3 -m venv /tmp/infvenv
    /tmp/infvenv/bin/pip install torch==2.13.0 'infinity-emb[server,torch,optimum]==0.0.78' 'transformers<5'
    # and again with ONNX Runtime's OpenVINO build, which Infinity then uses on CPU
    python3 -m venv /tmp/infvenv-ov
    /tmp/infvenv-ov/bin/pip install torch==2.13.0 'infinity-emb[server,torch,optimum]==0.0.78' 'transformers<5'
    /tmp/infvenv-ov/bin/pip uninstall -y onnxruntime && /tmp/infvenv-ov/bin/pip install onnxruntime-openvino==1.24.1
    # the comparison, quiet host (about 35 minutes with the defaults)
    PYTHONPATH=$PWD python3 benchmarks/worker_vs_infinity.py --out quiet.json
    # the same under a fixed background load: one busy process pinned to one core
    PYTHONPATH=$PWD python3 benchmarks/worker_vs_infinity.py --background-load 1 --out loaded.json
    # checks the script itself in a few minutes (the figures mean nothing)
    PYTHONPATH=$PWD python3 benchmarks/worker_vs_infinity.py --smoke --out smoke.json

Method. Per round, for each suite (embed, rerank) and each server configuration in turn: start the
server (its own warm-up on), check one answer of each route, run every scenario (closed-loop,
benchmarks/worker_loadgen.py, the first --warmup seconds of each discarded), stop it. Only that
server runs while it is measured. The order of the servers rotates every round, so whoever went
first goes later next time. Figures per scenario: median and min-max over the rounds of throughput
(inputs/s: texts embedded or documents scored) and of each round's p50 and p99 request latency.

Peers. Infinity is tried in every configuration of --infinity (engine:dtype:batch size; by default
torch float32 at batch 32 (its default), torch bfloat16 at batch 32 and 16, and optimum, ONNX
Runtime on an O2-optimized export, with its CPU provider and with its OpenVINO provider, when their
venvs have them); "Infinity's best" in a
scenario is the configuration with the highest median throughput there. Every command line is
printed and stored in the JSON.

The worker runs with its default engine (--worker-engine auto: OpenVINO where installed) and the
dtype it picks on this CPU (--worker-dtype auto: bfloat16 where it measures faster than float32,
decided once per run and passed as --dtype; the ceilings use it too); more engines after the first
are measured too, as worker-ENGINE, for reference, and are not peers.

Models. Embed: the packaged all-MiniLM-L6-v2. Rerank: a random-weight XLM-R sequence classifier
shaped like bge-reranker-v2-m3 scaled down (benchmarks/shaped_models.py, CPU_RERANKER_CONFIG),
built into --workdir. Texts: 512 sentences of 8-64 words (--corpus legacy: the older harness's).

Also measured in the same run: the in-process ceiling (benchmarks/inprocess_ceiling.py) and
server / ceiling at 32 clients x 1 input (goal >= 0.8); per scenario, the traffic ceiling (the
worker's batcher and engine alone on that scenario's requests, no HTTP), the worker's share of it
and the share 2x Infinity would need; and bfloat16 vs float32 (embed cosine >=
0.995, rerank score difference <= 0.02). Goals of the comparison: the worker >= 2x Infinity's best
throughput (>= 1.5x with --background-load) at an equal or better p99, in every scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]

from background_load import background_load  # noqa: E402 - after the sys.path line
from bench_texts import corpus, rag_texts  # noqa: E402
from peer_servers import (  # noqa: E402
    DEFAULT_INFINITY_SETTINGS,
    InfinitySetting,
    MakeBody,
    ServerConfig,
    embed_body,
    free_port,
    infinity_config,
    infinity_has_optimum,
    onnx_copy,
    rerank_body,
    start,
    stop,
    wait_ready,
    worker_config,
)
from worker_loadgen import Result, run_load  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_RATIO_QUIET, GOAL_RATIO_LOADED, GOAL_CEILING = 2.0, 1.5, 0.8
GOAL_COSINE, GOAL_SCORE_DIFF = 0.995, 0.02


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Scenario:
    clients: int
    inputs: int  # texts per request (embed) or documents per query (rerank)

    @property
    def key(self) -> str:
        return f"{self.clients}x{self.inputs}"


@dataclass
class Suite:
    name: str  # "embed" or "rerank"
    model: Path
    scenarios: list[Scenario]
    texts: list[str]
    queries: list[str]
    configs: list[ServerConfig]

    def body(self, config: ServerConfig, scenario: Scenario) -> MakeBody:
        if self.name == "embed":
            return embed_body(self.texts, scenario.inputs)
        return rerank_body(config.peer, self.queries, self.texts, scenario.inputs)

    def path(self, config: ServerConfig) -> str:
        return config.embed_path if self.name == "embed" else config.rerank_path


EMBED_SCENARIOS = [Scenario(1, 1), Scenario(1, 16), Scenario(32, 1), Scenario(32, 16)]
RERANK_SCENARIOS = [Scenario(1, 16), Scenario(1, 100), Scenario(16, 16), Scenario(16, 100)]


# ---- setup --------------------------------------------------------------------------------------
def reranker_model(workdir: Path, smoke: bool) -> Path:
    from shaped_models import CPU_RERANKER_CONFIG, SMOKE_RERANKER_CONFIG, build_model

    name, config = ("reranker-smoke", SMOKE_RERANKER_CONFIG) if smoke else ("reranker-cpu", CPU_RERANKER_CONFIG)
    return build_model(workdir / name, "rerank", config, model_max_length=512)


def infinity_binary(args: argparse.Namespace, setting: InfinitySetting) -> str:
    return args.infinity_openvino_bin if setting.engine == "optimum-openvino" else args.infinity_bin


def infinity_settings(args: argparse.Namespace) -> list[InfinitySetting]:
    """The settings asked for, less the ONNX ones whose venv cannot run them (said aloud)."""
    settings = [InfinitySetting.parse(s) for s in args.infinity] if args.infinity else list(DEFAULT_INFINITY_SETTINGS)
    runnable = []
    for s in settings:
        provider = "OpenVINOExecutionProvider" if s.engine == "optimum-openvino" else "CPUExecutionProvider"
        if s.onnx and not infinity_has_optimum(infinity_binary(args, s), provider):
            say(f"note: {infinity_binary(args, s)}'s venv cannot run {s.name} (optimum with {provider}): left out")
            continue
        runnable.append(s)
    return runnable


def suite_configs(args: argparse.Namespace, name: str, model: Path, workdir: Path) -> list[ServerConfig]:
    """The worker (and its other engines, for reference), then every Infinity setting (optimum on an
    ONNX export of the same weights)."""
    first, *others = args.worker_engine
    configs = [worker_config(str(model), engine=first, dtype=args.worker_dtype)]
    configs += [worker_config(str(model), engine=e, name=f"worker-{e}", dtype=args.worker_dtype) for e in others]
    for setting in infinity_settings(args):
        served, warmup = model, True
        if setting.onnx:
            task = "feature-extraction" if name == "embed" else "text-classification"
            tag = hashlib.sha1(str(model.resolve()).encode()).hexdigest()[:8]  # one export per model
            served = onnx_copy(args.infinity_bin, model, task, workdir / f"{name}-{model.name}-{tag}-onnx")
            # Infinity's ONNX cross-encoder warms up with batch-size pairs of ~4100 tokens (it cuts
            # at max_position_embeddings, 8194 here as in bge-reranker-v2-m3): ONNX Runtime asks
            # for 25 GB for one attention and the server exits. The discarded seconds before each
            # scenario warm it up instead.
            warmup = name == "embed"
        configs.append(infinity_config(infinity_binary(args, setting), served, setting, workdir / "hf_home",
                                       warmup=warmup))
    return configs


def build_suites(args: argparse.Namespace, workdir: Path) -> list[Suite]:
    from fixtures.tiny_models import minilm_path

    texts = corpus() if args.corpus == "legacy" else rag_texts(512)
    queries = rag_texts(64, low=4, high=12, seed=99)
    suites = []
    if "embed" in args.suites:
        model = Path(args.embed_model) if args.embed_model else minilm_path()
        suites.append(Suite("embed", model, EMBED_SCENARIOS, texts, queries,
                            suite_configs(args, "embed", model, workdir)))
    if "rerank" in args.suites:
        model = reranker_model(workdir, args.smoke)
        suites.append(Suite("rerank", model, RERANK_SCENARIOS, texts, queries,
                            suite_configs(args, "rerank", model, workdir)))
    return suites


# ---- measuring ----------------------------------------------------------------------------------
def inprocess_ceiling(suite: Suite, workdir: Path, seconds: float, engine: str, dtype: str) -> dict[str, Any]:
    """The model alone in the worker's engine (benchmarks/inprocess_ceiling.py in a child process),
    its accuracy check, and each scenario's traffic ceiling."""
    inputs = workdir / f"{suite.name}-inputs.json"
    inputs.write_text(json.dumps({"texts": suite.texts, "queries": suite.queries}))
    cmd = [sys.executable, str(HERE / "inprocess_ceiling.py"), "--kind", suite.name, "--model", str(suite.model),
           "--inputs", str(inputs), "--seconds", str(seconds), "--engine", engine, "--dtype", dtype,
           "--traffic", *(s.key for s in suite.scenarios)]
    say("$ " + " ".join(cmd))
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check_answers(suite: Suite, config: ServerConfig, port: int) -> None:
    """One request of each kind must come back whole: the server really serves this model as asked."""
    import httpx

    body, n = suite.body(config, Scenario(1, 3))(0)
    reply = httpx.post(f"http://127.0.0.1:{port}{suite.path(config)}", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
    if reply.status_code != 200:
        raise RuntimeError(f"{config.name}: {suite.path(config)} answered {reply.status_code}: {reply.text[:300]}")
    answer = reply.json()
    items = answer["data"] if suite.name == "embed" else (answer["results"] if isinstance(answer, dict) else answer)
    if len(items) != n:
        raise RuntimeError(f"{config.name}: {n} inputs sent, {len(items)} answers: {reply.text[:300]}")


def measure_server(suite: Suite, config: ServerConfig, args: argparse.Namespace, log: Path) -> dict[str, Result]:
    """Start one server, check it, run every scenario, stop it."""
    port = free_port()
    proc = start(config, port, log)
    try:
        ready = wait_ready(proc, port)
        check_answers(suite, config, port)
        say(f"  {config.name}: ready after {ready:.1f} s")
        results = {}
        for scenario in suite.scenarios:
            res = asyncio.run(run_load("127.0.0.1", port, suite.path(config), suite.body(config, scenario),
                                       concurrency=scenario.clients, seconds=args.seconds, warmup=args.warmup))
            results[scenario.key] = res
            say(f"    {suite.name} {scenario.key:<7} {res.throughput:8.1f} inputs/s  p50 {ms(res, 50):8.1f} ms  "
                f"p99 {ms(res, 99):8.1f} ms  errors {res.errors}")
        return results
    finally:
        stop(proc)


def ms(result: Result, p: float) -> float:
    return result.percentile(p) * 1000


def rotated(configs: list[ServerConfig], rnd: int) -> list[ServerConfig]:
    """Round r starts with configuration r (mod n): every server goes first in turn."""
    shift = rnd % len(configs)
    return configs[shift:] + configs[:shift]


def run_rounds(suite: Suite, args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, list[Result]]]:
    """Every configuration alone, `--rounds` times; a configuration that fails is dropped (and said)."""
    raw: dict[str, dict[str, list[Result]]] = {c.name: {} for c in suite.configs}
    failed: set[str] = set()
    for rnd in range(args.rounds):
        for config in rotated(suite.configs, rnd):
            if config.name in failed:
                continue
            say(f"[{suite.name} round {rnd + 1}/{args.rounds}] {config.name}")
            log = workdir / f"{suite.name}-{config.name}.log"
            try:
                for key, res in measure_server(suite, config, args, log).items():
                    raw[config.name].setdefault(key, []).append(res)
            except Exception as exc:  # noqa: BLE001 - one peer configuration failing must not end the run
                failed.add(config.name)
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                say(f"  {config.name} FAILED: {exc}\n  log ({log}):\n{tail}")
    return {name: per for name, per in raw.items() if name not in failed}


# ---- summarizing --------------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, float]:
    """Median and range; rounds without a completed request (no latency, NaN) are left out."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(results: list[Result]) -> dict[str, Any]:
    """Per scenario and server: median and min-max over the rounds."""
    return {
        "throughput": spread([r.throughput for r in results]),
        "p50_ms": spread([ms(r, 50) for r in results]),
        "p99_ms": spread([ms(r, 99) for r in results]),
        "errors": sum(r.errors for r in results),
        "rounds": len(results),
    }


def compare(scenario_stats: dict[str, dict[str, Any]], goal: float) -> dict[str, Any] | None:
    """The worker against Infinity's best configuration in one scenario."""
    worker = scenario_stats.get("worker")
    peers = {name: s for name, s in scenario_stats.items() if not name.startswith("worker")}
    if worker is None or not peers:
        return None
    best_name = max(peers, key=lambda name: peers[name]["throughput"]["median"])
    best = peers[best_name]
    ratio = worker["throughput"]["median"] / best["throughput"]["median"] if best["throughput"]["median"] else 0.0
    p99_ok = worker["p99_ms"]["median"] <= best["p99_ms"]["median"]
    ok = ratio >= goal and p99_ok and not worker["errors"]
    return {"infinity_best": best_name, "ratio": ratio, "goal": goal, "p99_not_worse": p99_ok, "pass": ok}


def fmt(s: dict[str, Any]) -> str:
    t, p50, p99 = s["throughput"], s["p50_ms"], s["p99_ms"]
    return (f"{t['median']:7.1f} [{t['min']:.1f}-{t['max']:.1f}]  p50 {p50['median']:.1f} "
            f"[{p50['min']:.1f}-{p50['max']:.1f}]  p99 {p99['median']:.1f} [{p99['min']:.1f}-{p99['max']:.1f}]")


def report_suite(suite: Suite, raw: dict[str, dict[str, list[Result]]], ceiling: dict[str, Any],
                 goal: float) -> dict[str, Any]:
    stats = {name: {key: summarize(rs) for key, rs in per.items()} for name, per in raw.items()}
    say(f"\n== {suite.name}: inputs/s median [min-max], p50 / p99 ms median [min-max], {rounds_done(raw)} rounds")
    comparisons = {}
    for scenario in suite.scenarios:
        per_server = {name: s[scenario.key] for name, s in stats.items() if scenario.key in s}
        say(f"{suite.name} {scenario.key}")
        for name, s in per_server.items():
            say(f"  {name:<34} {fmt(s)}")
        verdict = compare(per_server, goal)
        if verdict:
            say(f"  -> worker / {verdict['infinity_best']} = {verdict['ratio']:.2f}x (goal >= {goal}x), "
                f"p99 {'not worse' if verdict['p99_not_worse'] else 'WORSE'}: {'PASS' if verdict['pass'] else 'FAIL'}")
            traffic = ceiling.get("traffic", {}).get(scenario.key)
            if traffic:
                verdict |= traffic_verdict(per_server, verdict, traffic, goal)
        comparisons[scenario.key] = verdict
    return {"servers": stats, "comparison": comparisons, "ceiling": ceiling_verdict(suite, stats, ceiling)}


def traffic_verdict(per_server: dict[str, dict[str, Any]], verdict: dict[str, Any], traffic: float,
                    goal: float) -> dict[str, Any]:
    """The worker and the goal against the batcher and engine alone on this scenario's traffic."""
    worker = per_server["worker"]["throughput"]["median"]
    needed = goal * per_server[verdict["infinity_best"]]["throughput"]["median"]
    say(f"  -> model alone on this traffic (worker's batcher, no HTTP): {traffic:.1f} inputs/s; the worker reaches "
        f"{worker / traffic:.2f} of it; {goal}x Infinity's best needs {needed:.1f} = {needed / traffic:.2f} of it")
    return {"traffic_ceiling": traffic, "worker_over_traffic_ceiling": worker / traffic,
            "goal_over_traffic_ceiling": needed / traffic}


def rounds_done(raw: dict[str, dict[str, list[Result]]]) -> int:
    return max((len(rs) for per in raw.values() for rs in per.values()), default=0)


def ceiling_verdict(suite: Suite, stats: dict[str, dict[str, Any]], ceiling: dict[str, Any]) -> dict[str, Any]:
    """Server / ceiling at the many-clients, smallest-request scenario; the accuracy check against its bar."""
    many_small = min((s for s in suite.scenarios if s.clients > 1), key=lambda s: s.inputs)
    worker = stats.get("worker", {}).get(many_small.key)
    ratio = worker["throughput"]["median"] / ceiling["inputs_per_s"] if worker else None
    acc = ceiling["accuracy"]
    acc_ok = acc["min_cosine"] >= GOAL_COSINE if suite.name == "embed" else acc["max_score_diff"] <= GOAL_SCORE_DIFF
    say(f"  ceiling (model alone, batch {ceiling['batch']}): {ceiling['inputs_per_s']:.1f} inputs/s; worker at "
        f"{many_small.key}: {'-' if ratio is None else f'{ratio:.2f}'} of it (goal >= {GOAL_CEILING})")
    say(f"  bfloat16 vs float32: {acc} ({'PASS' if acc_ok else 'FAIL'})")
    return {**ceiling, "scenario": many_small.key, "server_over_ceiling": ratio,
            "ceiling_pass": ratio is not None and ratio >= GOAL_CEILING, "accuracy_pass": acc_ok}


# ---- main ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinity-bin", default=os.environ.get("INFINITY_BIN", "/tmp/infvenv/bin/infinity_emb"))
    ap.add_argument("--infinity-openvino-bin",
                    default=os.environ.get("INFINITY_OPENVINO_BIN", "/tmp/infvenv-ov/bin/infinity_emb"),
                    help="Infinity in a venv with onnxruntime-openvino, for optimum-openvino settings")
    ap.add_argument("--infinity", action="append", metavar="ENGINE:DTYPE:BATCH",
                    help="an Infinity configuration to try (repeat); default: "
                         + ", ".join(f"{s.engine}:{s.dtype}:{s.batch_size}" for s in DEFAULT_INFINITY_SETTINGS))
    ap.add_argument("--suites", nargs="+", choices=("embed", "rerank"), default=["embed", "rerank"])
    ap.add_argument("--worker-engine", nargs="+", default=["auto"], choices=("auto", "torch", "openvino"),
                    help="the worker's --engine; more than one also measures the others, for reference "
                         "(as worker-ENGINE), against the first's ceiling")
    ap.add_argument("--worker-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="the worker's --dtype, and the ceilings'; auto: what the worker picks on this CPU "
                         "(bfloat16 where it measures faster), decided once at the start of the run")
    ap.add_argument("--embed-model", help="embedding model directory (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario and round")
    ap.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each scenario")
    ap.add_argument("--ceiling-seconds", type=float, default=8.0)
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="N busy processes pinned to cores while measuring (goal then >= 1.5x)")
    ap.add_argument("--corpus", choices=("rag", "legacy"), default="rag")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/worker_vs_infinity"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny reranker, one round of 1 s per scenario: checks the script, not speed")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.warmup, args.ceiling_seconds = 1, 1.0, 0.5, 1.0
    return args


def host_state() -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"load_average": os.getloadavg(), "cores": cores, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_commands(suites: list[Suite]) -> dict[str, dict[str, str]]:
    commands = {}
    for suite in suites:
        commands[suite.name] = {c.name: c.shown() for c in suite.configs}
        say(f"{suite.name} servers ({{port}} is chosen per start):")
        for name, line in commands[suite.name].items():
            say(f"  {name}: {line}")
    return commands


def main() -> int:
    args = parse_args()
    if not Path(args.infinity_bin).exists():
        say(f"no Infinity at {args.infinity_bin}: see this script's docstring (--help) to install it")
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker_dtype == "auto":
        from fallback_worker.hardware import default_dtype

        args.worker_dtype, why = default_dtype("cpu")
        say(f"worker dtype: {args.worker_dtype} ({why})")
    goal = GOAL_RATIO_LOADED if args.background_load else GOAL_RATIO_QUIET
    suites = build_suites(args, args.workdir)
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "commands": print_commands(suites),
                              "host_before": host_state(), "suites": {}}
    with background_load(args.background_load) as pinned:
        if pinned:
            say(f"background load: {len(pinned)} busy process(es) on cores {pinned}")
        report["background_cores"] = pinned
        for suite in suites:
            ceiling = inprocess_ceiling(suite, args.workdir, args.ceiling_seconds, args.worker_engine[0],
                                        args.worker_dtype)
            raw = run_rounds(suite, args, args.workdir)
            report["suites"][suite.name] = report_suite(suite, raw, ceiling, goal)
    report["host_after"] = host_state()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        say(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
