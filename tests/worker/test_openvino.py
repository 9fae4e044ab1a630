"""The OpenVINO engine (--engine openvino): the same answers as torch, a converted model cached
between starts, and the worker process serving with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino (the [worker] extra's CPU engine) is not installed")

from fallback_worker import openvino_engine
from fallback_worker.config import WorkerConfig
from fallback_worker.engine import Engine, describe_model
from fallback_worker.errors import StartupError
from fallback_worker.loading import load_engine
from fallback_worker.openvino_engine import OpenVinoEngine

TEXTS = [
    "What is the capital of France?",
    "bge-m3 检索增强生成 needs long documents that are split into chunks before they are embedded " * 3,
    "a",
    "Rerankers read the query and the passage together.",
    "混合检索：稠密向量与稀疏词权重",
]


def _ov(model_dir: Path, dtype: str, cache: Path | None, streams: int | None = None) -> OpenVinoEngine:
    return OpenVinoEngine.from_files(describe_model(str(model_dir), dtype=dtype, device="cpu"),
                                     streams=streams, cache_dir=cache)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos: np.ndarray = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return cos


def test_float32_embeddings_match_torch_for_mean_and_cls_pooling(
    minilm_dir: Path, tiny_embedder_dir: Path, tmp_path: Path
) -> None:
    for model_dir in (minilm_dir, tiny_embedder_dir):  # MiniLM: BERT, mean; tiny: XLM-R, CLS
        torch_engine = Engine.load(str(model_dir), dtype="float32", device="cpu")
        engine = _ov(model_dir, "float32", tmp_path)
        assert engine.spec.engine == "openvino" and engine.spec.dtype == "float32"
        batch = torch_engine.tokenizer.encode(TEXTS, truncate=True)
        want, got = torch_engine.embed(batch), engine.embed(batch)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


def test_bfloat16_stays_within_the_accuracy_bar(minilm_dir: Path, tmp_path: Path) -> None:
    reference = Engine.load(str(minilm_dir), dtype="float32", device="cpu")
    engine = _ov(minilm_dir, "bfloat16", tmp_path)
    batch = reference.tokenizer.encode(TEXTS, truncate=True)
    # Issue 12's bar for bf16 against fp32; a CPU without bf16 runs f32 and passes trivially.
    assert _cosines(engine.embed(batch), reference.embed(batch)).min() >= 0.995


def test_sparse_and_token_embeddings_match_torch(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    torch_engine = Engine.load(str(tiny_embedder_dir), dtype="float32", device="cpu")
    engine = _ov(tiny_embedder_dir, "float32", tmp_path)
    assert engine.spec.sparse
    batch = torch_engine.tokenizer.encode(TEXTS, truncate=True)
    for want, got in zip(torch_engine.embed_sparse(batch), engine.embed_sparse(batch), strict=True):
        assert [t for t, _ in got] == [t for t, _ in want]
        np.testing.assert_allclose([w for _, w in got], [w for _, w in want], atol=1e-4)
    for want_rows, got_rows in zip(torch_engine.embed_all(batch), engine.embed_all(batch), strict=True):
        assert got_rows.shape == want_rows.shape  # padding removed, one row per token
        np.testing.assert_allclose(got_rows, want_rows, atol=2e-4, rtol=1e-3)


def test_reranker_logits_match_torch(tiny_reranker_dir: Path, tmp_path: Path) -> None:
    torch_engine = Engine.load(str(tiny_reranker_dir), dtype="float32", device="cpu")
    engine = _ov(tiny_reranker_dir, "float32", tmp_path)
    assert engine.spec.kind == "reranker"
    pairs = torch_engine.tokenizer.encode([("what is bge?", t) for t in TEXTS], truncate=True)
    np.testing.assert_allclose(engine.classify(pairs), torch_engine.classify(pairs), atol=1e-4)


def test_the_converted_model_is_cached_and_a_changed_model_is_converted_again(
    tiny_embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "ov-cache"
    first = _ov(tiny_embedder_dir, "float32", cache)
    batch = first.tokenizer.encode(TEXTS, truncate=True)
    expected = first.embed(batch)
    key = openvino_engine.ir_key(describe_model(str(tiny_embedder_dir), device="cpu"))
    assert (cache / key / openvino_engine.IR_NAME).is_file()

    # A second start reads the IR: no torch weights are loaded, and the answers are the same.
    def no_weights(*_: Any, **__: Any) -> Any:
        raise AssertionError("the torch weights were loaded although the converted model is cached")

    monkeypatch.setattr(openvino_engine, "load_weights", no_weights)
    np.testing.assert_array_equal(_ov(tiny_embedder_dir, "float32", cache).embed(batch), expected)

    # Other weights (same file names) give another key: a stale conversion is never served.
    changed = tmp_path / "changed"
    from fixtures.tiny_models import perturbed_copy

    perturbed_copy(tiny_embedder_dir, changed)
    assert openvino_engine.ir_key(describe_model(str(changed), device="cpu")) != key


def test_an_unwritable_cache_costs_a_conversion_not_the_start(
    tiny_embedder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    engine = _ov(tiny_embedder_dir, "float32", blocked / "cache")
    assert engine.embed(engine.tokenizer.encode(["still serves"], truncate=True)).shape == (1, 32)
    assert "cannot cache the converted model" in caplog.text


def test_two_streams_answer_concurrent_batches_like_one(minilm_dir: Path, tmp_path: Path) -> None:
    import threading

    engine = _ov(minilm_dir, "float32", tmp_path, streams=2)
    assert engine.default_forward_workers() == 2
    batches = [engine.tokenizer.encode(TEXTS[i:] + TEXTS[:i], truncate=True) for i in range(len(TEXTS))]
    want = [engine.embed(b) for b in batches]
    got: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = engine.embed(batches[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(want):
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


def test_engine_choice(tiny_embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WorkerConfig(model_id=str(tiny_embedder_dir), dtype="float32", device="cpu",
                          openvino_cache_dir=str(tmp_path))
    assert load_engine(WorkerConfig(**{**config.__dict__, "engine": "auto"})).spec.engine == "openvino"
    assert load_engine(WorkerConfig(**{**config.__dict__, "engine": "torch"})).spec.engine == "torch"
    with pytest.raises(StartupError, match="runs on the CPU"):
        load_engine(WorkerConfig(**{**config.__dict__, "engine": "openvino", "device": "cuda"}))
    with pytest.raises(StartupError, match="not one of auto, torch, openvino"):
        load_engine(WorkerConfig(**{**config.__dict__, "engine": "onnx"}))

    # auto on a host without the package is torch; asked for by name, it says how to install it.
    monkeypatch.setattr(openvino_engine, "available", lambda: False)
    assert load_engine(WorkerConfig(**{**config.__dict__, "engine": "auto"})).spec.engine == "torch"
    with pytest.raises(StartupError, match=r"pip install 'tei-manager\[worker\]'"):
        load_engine(WorkerConfig(**{**config.__dict__, "engine": "openvino"}))


def test_auto_falls_back_to_torch_when_conversion_fails(
    tiny_embedder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails(files: Any) -> Any:
        raise StartupError("OpenVINO cannot convert tiny (simulated: no converter for this architecture)")

    monkeypatch.setattr(openvino_engine, "convert", fails)
    config = WorkerConfig(model_id=str(tiny_embedder_dir), dtype="float32", device="cpu",
                          openvino_cache_dir=str(tmp_path), engine="auto")
    assert load_engine(config).spec.engine == "torch"
    assert "running the model with torch instead" in caplog.text
    with pytest.raises(StartupError, match="cannot convert"):
        load_engine(WorkerConfig(**{**config.__dict__, "engine": "openvino"}))


def test_worker_process_serves_with_openvino(minilm_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from test_process import _command, _free_port, _port_open

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [*_command(), "--model-id", str(minilm_dir), "--hostname", "127.0.0.1", "--port", str(port),
           "--engine", "openvino", "--dtype", "float32", "--openvino-cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _port_open(port):
            assert proc.poll() is None, "worker exited early:\n" + (proc.stdout.read() if proc.stdout else "")
            assert time.monotonic() < deadline, "port never opened"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{base}/info", timeout=10).json()
        assert info["fallback_worker"]["engine"] == "openvino"
        assert info["model_dtype"] == "float32" and info["fallback_worker"]["unpadded"] is False
        got = np.array(httpx.post(f"{base}/embed", json={"inputs": TEXTS}, timeout=30).json())
        want = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
        assert _cosines(got, want).min() > 0.99999
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any((tmp_path / "cache").iterdir()), "the converted model was not cached"


def test_bad_engine_flag_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "fallback_worker", "--model-id", "x", "--engine", "onnx"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'onnx'" in result.stderr


def test_conversion_sends_no_telemetry(tiny_embedder_dir: Path, tmp_path: Path) -> None:
    """OpenVINO's converter reports usage to Google Analytics unless told otherwise; a worker's
    conversion must not (nor leave its consent and counter files in the home directory)."""
    script = (
        "import sys; from pathlib import Path; "
        "from fallback_worker.engine import describe_model; "
        "from fallback_worker.openvino_engine import OpenVinoEngine; "
        f"OpenVinoEngine.from_files(describe_model({str(tiny_embedder_dir)!r}, device='cpu'), cache_dir=None); "
        "import openvino_telemetry; t = openvino_telemetry.Telemetry(); "
        "print('consent', t.consent)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "consent False" in done.stdout
    assert not (tmp_path / "intel").exists()
