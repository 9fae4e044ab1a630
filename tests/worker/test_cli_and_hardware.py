"""Flag parsing like text-embeddings-router, CPU quota detection and the dtype choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from fallback_worker import cli, hardware


def _parse(argv: list[str]) -> cli.WorkerConfig:
    return cli.to_config(cli.build_parser().parse_args(argv))


def test_tei_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PORT", "HOSTNAME", "MAX_BATCH_TOKENS", "AUTO_TRUNCATE", "MAX_CLIENT_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)
    c = _parse(["--model-id", "BAAI/bge-m3"])
    assert (c.port, c.hostname, c.max_batch_tokens, c.max_concurrent_requests) == (3000, "0.0.0.0", 16384, 512)
    assert (c.max_client_batch_size, c.auto_truncate, c.payload_limit, c.max_batch_requests) == (32, True, 2_000_000, None)
    assert c.model_name == "BAAI/bge-m3"


def test_auto_truncate_forms() -> None:
    assert _parse(["--model-id", "m", "--auto-truncate"]).auto_truncate is True
    assert _parse(["--model-id", "m", "--auto-truncate", "false"]).auto_truncate is False
    assert _parse(["--model-id", "m", "--auto-truncate=true"]).auto_truncate is True


def test_env_vars_and_flags_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ID", "from-env")
    monkeypatch.setenv("MAX_BATCH_TOKENS", "2048")
    monkeypatch.setenv("AUTO_TRUNCATE", "false")
    monkeypatch.setenv("API_KEY", "k")
    c = _parse(["--max-batch-tokens", "4096"])
    assert (c.model_id, c.max_batch_tokens, c.auto_truncate, c.api_key) == ("from-env", 4096, False, "k")


def test_read_deadline_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLBACK_HEADER_READ_TIMEOUT", raising=False)
    monkeypatch.setenv("FALLBACK_BODY_READ_TIMEOUT", "45")
    c = _parse(["--model-id", "m"])
    assert (c.header_read_timeout, c.body_read_timeout) == (10.0, 45.0)
    assert _parse(["--model-id", "m", "--header-read-timeout", "2.5"]).header_read_timeout == 2.5


def test_hostname_like_tei(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "3f2a1c9d0b7e")  # what Docker puts there: not an address
    assert _parse(["--model-id", "m"]).hostname == "0.0.0.0"
    monkeypatch.setenv("HOSTNAME", "127.0.0.1")
    assert _parse(["--model-id", "m"]).hostname == "127.0.0.1"
    assert _parse(["--model-id", "m", "--hostname", "::1"]).hostname == "::1"


def test_every_tei_flag_is_accepted() -> None:
    argv = [
        "--model-id", "m", "--revision", "refs/pr/2", "--tokenization-workers", "2", "--dtype", "float32",
        "--served-model-name", "s", "--pooling", "mean", "--max-concurrent-requests", "8", "--max-batch-tokens", "512",
        "--max-batch-requests", "4", "--max-client-batch-size", "4", "--auto-truncate", "--default-prompt", "q: ",
        "--dense-path", "2_Dense", "--hf-token", "t", "--hostname", "127.0.0.1", "-p", "8080",
        "--huggingface-hub-cache", "/data", "--payload-limit", "100", "--api-key", "k", "--json-output",
        "--disable-spans", "--otlp-endpoint", "http://x:4317", "--otlp-service-name", "svc", "--prometheus-port", "9001",
        "--cors-allow-origin", "http://a", "http://b",
    ]
    c = _parse(argv)
    assert (c.port, c.served_model_name, c.max_batch_requests, c.json_output) == (8080, "s", 4, True)
    assert c.cors_allow_origin == ["http://a", "http://b"]


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert hardware.cgroup_cpu_limit(tmp_path) == 1.5
    assert hardware.usable_cpus(tmp_path) <= 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert hardware.cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert hardware.cgroup_cpu_limit(tmp_path) == 1.0
    assert hardware.usable_cpus(tmp_path) == 1
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert hardware.cgroup_cpu_limit(tmp_path) is None


def test_omp_num_threads_wins_over_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.torch_threads(tmp_path) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert hardware.torch_threads(tmp_path) == hardware.usable_cpus(tmp_path)


def test_default_dtype() -> None:
    assert hardware.default_dtype("cuda")[0] == "float16"
    assert hardware.default_dtype("cpu", {"avx2", "avx512_bf16"}, bf16_gain=1.4)[0] == "bfloat16"
    assert hardware.default_dtype("cpu", {"amx_bf16"}, bf16_gain=3.0)[0] == "bfloat16"
    assert hardware.default_dtype("cpu", {"avx2", "avx512f"})[0] == "float32"


def test_bfloat16_instructions_that_run_slower_than_float32_are_not_chosen() -> None:
    """An Intel Xeon VM with AVX-512 BF16 but no AMX ran bfloat16 matmuls at 0.55-0.65x float32:
    the flag alone would have made every CPU worker there 1.2-1.6x slower (and less exact)."""
    dtype, why = hardware.default_dtype("cpu", {"avx512_bf16"}, bf16_gain=0.6)
    assert dtype == "float32" and "0.60x float32" in why
    assert hardware.default_dtype("cpu", {"avx512_bf16"}, bf16_gain=1.05)[0] == "float32"  # not worth the rounding
    assert hardware.default_dtype("cpu", {"avx2"})[1] == "no bfloat16 instructions on this CPU"


def test_the_bfloat16_gain_is_measured_on_this_cpu_and_leaves_the_thread_count_alone() -> None:
    import torch

    before = torch.get_num_threads()
    gain = hardware.bf16_matmul_gain(threads=1, repeats=2)
    assert 0.05 < gain < 50 and torch.get_num_threads() == before
