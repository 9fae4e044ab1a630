"""Which engine runs the model (--engine): torch, OpenVINO, or the best one this host has."""

from __future__ import annotations

import logging
from pathlib import Path

from . import openvino_engine
from .config import WorkerConfig
from .engine import BaseEngine, Engine, describe_model
from .errors import StartupError

log = logging.getLogger("fallback_worker.loading")

ENGINES = ("auto", "torch", "openvino")


def load_engine(config: WorkerConfig) -> BaseEngine:
    """Load the model for ``config.engine``.

    auto: OpenVINO on the CPU when the package is installed (faster there, see
    openvino_engine.py), torch otherwise; a model OpenVINO cannot convert falls back to torch with
    a warning. An explicit choice that cannot run is a startup error.
    """
    if config.engine not in ENGINES:
        raise StartupError(f"--engine {config.engine!r} is not one of {', '.join(ENGINES)}")
    files = describe_model(
        config.model_id, revision=config.revision, dtype=config.dtype, pooling=config.pooling,
        cache_dir=config.huggingface_hub_cache, token=config.hf_token, max_batch_tokens=config.max_batch_tokens,
        auto_truncate=config.auto_truncate, device=config.device,
    )
    choice = config.engine
    if choice == "auto":
        choice = "openvino" if files.spec.device == "cpu" and openvino_engine.available() else "torch"
    if choice == "openvino":
        if not openvino_engine.available():
            raise StartupError(
                "--engine openvino needs the openvino package: pip install 'tei-manager[worker]' (or openvino)"
            )
        cache_dir = Path(config.openvino_cache_dir).expanduser() if config.openvino_cache_dir else None
        try:
            return openvino_engine.OpenVinoEngine.from_files(
                files, streams=config.forward_workers, cache_dir=cache_dir
            )
        except StartupError as exc:
            if config.engine == "openvino":
                raise
            log.warning("%s; running the model with torch instead", exc)
    return Engine.from_files(files, unpadded=config.unpadded)
