"""The servers a CPU benchmark compares: how each is started (one printable command line), when it
is ready, how it is stopped, and the request bodies of its embed and rerank routes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MakeBody = Callable[[int], tuple[bytes, int]]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
INFINITY_ENV = {**OFFLINE_ENV, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration; `argv` has `{port}` where the port goes."""

    name: str
    peer: str  # "worker" or "infinity": the side of the comparison it counts for
    argv: tuple[str, ...]
    embed_path: str
    rerank_path: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]

    def shown(self) -> str:
        """The exact command line, environment first, as it can be pasted into a shell."""
        env = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"cd {self.cwd} && {env} {' '.join(self.argv)}"


# ---- configurations -----------------------------------------------------------------------------
def worker_config(model: str, *, engine: str = "auto", name: str = "worker", dtype: str = "bfloat16",
                  max_client_batch: int = 128) -> ServerConfig:
    """The worker as a deployment runs it on CPU: its own defaults (its engine's forward threads,
    warm-up before the port opens), with limits high enough for 32 x 100 inputs. ``engine``: its
    --engine (auto: OpenVINO where installed); ``dtype``: its --dtype, passed explicitly so that a
    run never depends on the worker's startup measurement (hardware.default_dtype) coming out the same."""
    argv = (sys.executable, "-m", "fallback_worker", "--model-id", model, "--hostname", "127.0.0.1",
            "--port", "{port}", "--dtype", dtype, "--max-client-batch-size", str(max_client_batch),
            "--max-concurrent-requests", "8192", "--engine", engine)
    return ServerConfig(name, "worker", argv, "/v1/embeddings", "/rerank", dict(OFFLINE_ENV))


@dataclass(frozen=True)
class InfinitySetting:
    """One Infinity configuration to try: engine, dtype and batch size; warm-up stays on."""

    engine: str  # "torch", "optimum" (ONNX Runtime) or "optimum-openvino" (ONNX Runtime's OpenVINO provider)
    dtype: str
    batch_size: int

    @property
    def onnx(self) -> bool:
        return self.engine.startswith("optimum")

    @property
    def name(self) -> str:
        return f"infinity-{self.engine}-{self.dtype}-bs{self.batch_size}"

    @classmethod
    def parse(cls, text: str) -> InfinitySetting:
        engine, dtype, batch = text.split(":")
        return cls(engine, dtype, int(batch))


# Infinity 0.0.78's defaults are torch, dtype auto (float32 on CPU), batch size 32, warm-up on.
# Which torch dtype is faster depends on the CPU: bfloat16 on an AMD EPYC (float32 was the slowest
# setting in every scenario there), float32 on an Intel Xeon VM whose AVX-512 BF16 matmuls run at
# 0.6x float32; both are tried. ONNX Runtime (`optimum`, with Infinity's own graph optimization) is
# what its maintainer recommends for CPU, and Infinity runs it on ONNX Runtime's OpenVINO provider
# whenever onnxruntime-openvino is installed instead of onnxruntime (`optimum-openvino`, its own
# venv); a smaller batch pads less when requests arrive one input at a time.
DEFAULT_INFINITY_SETTINGS = (
    InfinitySetting("torch", "float32", 32),
    InfinitySetting("torch", "bfloat16", 32),
    InfinitySetting("torch", "bfloat16", 16),
    InfinitySetting("optimum", "float32", 32),
    InfinitySetting("optimum-openvino", "float32", 32),
)


def infinity_config(binary: str, model: Path, setting: InfinitySetting, hf_home: Path, *,
                    warmup: bool = True) -> ServerConfig:
    """Infinity's v2 CLI for one setting; its routes carry no /v1 prefix by default (url_prefix "").

    The optimum engine is started inside the model directory as `--model-id .`: Infinity 0.0.78
    passes the ONNX file's path, as found under the model id, to optimum as a file name, and
    optimum 2 matches it against bare file names, so only a model.onnx found as `model.onnx` loads."""
    onnx = setting.onnx
    argv = (binary, "v2", "--model-id", "." if onnx else str(model), "--served-model-name", "model",
            "--engine", "optimum" if onnx else setting.engine, "--device", "cpu", "--dtype", setting.dtype,
            "--batch-size", str(setting.batch_size), "--model-warmup" if warmup else "--no-model-warmup",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning")
    # HF_HOME: where the optimum engine caches its optimized graph, kept out of the user's cache.
    return ServerConfig(setting.name, "infinity", argv, "/embeddings", "/rerank",
                        {**INFINITY_ENV, "HF_HOME": str(hf_home)}, model if onnx else ROOT)


def infinity_has_optimum(binary: str, provider: str = "CPUExecutionProvider") -> bool:
    """Whether Infinity's venv can run its `optimum` engine (optimum's ONNX Runtime classes) with
    ONNX Runtime's ``provider`` (Infinity picks OpenVINO's on CPU whenever it is installed)."""
    python = Path(binary).with_name("python")
    check = f"import optimum.onnxruntime, onnxruntime; assert {provider!r} in onnxruntime.get_available_providers()"
    probe = subprocess.run([str(python), "-c", check], capture_output=True)
    return probe.returncode == 0


def onnx_copy(binary: str, model: Path, task: str, out: Path) -> Path:
    """A copy of `model` with a float32 `model.onnx` exported by optimum-cli, as hub repos ship one
    for Infinity's `optimum` engine (which refuses a directory without one).

    The graph is exported already optimized for CPU (O2: ONNX Runtime's fusions of attention,
    layer norm and GELU, exact GELU kept) because Infinity 0.0.78's own optimization step fails on
    optimum 2 (`OptimizationConfig` lost `optimize_with_onnxruntime_only`) and would fall back to
    the plain graph. `--library-name transformers`: the encoder's last_hidden_state as output, which
    Infinity pools itself (a sentence-transformers export has other output names)."""
    if (out / "model.onnx").is_file():
        return out
    shutil.copytree(model, out, dirs_exist_ok=True)
    cli = Path(binary).with_name("optimum-cli")
    cmd = [str(cli), "export", "onnx", "--model", str(model), "--task", task, "--library-name", "transformers",
           "--dtype", "fp32", "--optimize", "O2", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **OFFLINE_ENV})
    return out


# ---- request bodies -----------------------------------------------------------------------------
def embed_body(texts: list[str], batch: int) -> MakeBody:
    """OpenAI embeddings requests (the same bytes for both servers), cycling through `texts`."""

    def make(i: int) -> tuple[bytes, int]:
        start = (i * batch) % len(texts)
        chunk = [texts[(start + k) % len(texts)] for k in range(batch)]
        return json.dumps({"model": "model", "input": chunk}).encode(), batch

    return make


def rerank_body(peer: str, queries: list[str], texts: list[str], documents: int) -> MakeBody:
    """One query and `documents` texts per request: TEI's body (`texts`) for the worker, Infinity's
    Cohere-style one (`documents`); each scores as its clients get by default (raw_scores false)."""
    key = "texts" if peer == "worker" else "documents"

    def make(i: int) -> tuple[bytes, int]:
        start = (i * documents) % len(texts)
        chunk = [texts[(start + k) % len(texts)] for k in range(documents)]
        body = {"query": queries[i % len(queries)], key: chunk}
        if peer != "worker":
            body["model"] = "model"
        return json.dumps(body).encode(), documents

    return make


# ---- process control ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(config: ServerConfig, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the server, its output to `log` (read it when a start fails)."""
    with log.open("ab") as sink:
        return subprocess.Popen(config.command(port), cwd=config.cwd, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, **config.env})


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str = "/health", limit: float = 600,
               log: Path | None = None) -> float:
    """Seconds until `path` answers 200 (both servers open their port only after their warm-up).
    With `log`, a server that exits while starting is reported with the end of its log."""
    import httpx

    began = time.monotonic()
    while time.monotonic() - began < limit:
        if proc.poll() is not None:
            tail = f":\n{log.read_text(errors='replace')[-2000:]}" if log is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode} while starting{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {limit:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_worker(model: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    """The worker with extra flags, output discarded (for worker_ceiling.py)."""
    cmd = [*worker_config(model).command(port), *extra]
    print("$", " ".join(cmd), flush=True)  # noqa: T201 - a benchmark shows what it runs
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **OFFLINE_ENV})
