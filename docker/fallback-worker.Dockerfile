# The fallback worker (TEI-compatible transformers server) as a container image, built from
# python:3.11-slim through a registry:
#
#   docker build -f docker/fallback-worker.Dockerfile -t tei-manager/fallback-worker:latest .
#
# CPU build of torch by default; for an NVIDIA GPU pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# (and run with --gpus). Where no registry can be reached, scripts/build-worker-image.sh builds an
# equivalent image (same user, entry point, health check, ports) from this host's Python instead.
#
# Run it like TEI (the manager does this for you):
#   docker run -p 127.0.0.1:8080:80 -v /path/to/model:/models/m:ro IMAGE --model-id /models/m --port 80
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/worker \
    HF_HOME=/home/worker/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PORT=80

# torch first and pinned, so that nothing later pulls a different one. The extra index offers the
# wanted build (2.13.0+cpu, +cu128, ...), which pip prefers to PyPI's plain 2.13.0 (CUDA) wheel;
# torch's own dependencies come from PyPI.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tei_manager ./tei_manager
COPY fallback_worker ./fallback_worker
RUN PIP_CONSTRAINT=/tmp/constraints.txt pip install '.[worker]' \
 && rm -rf /src /tmp/constraints.txt

COPY docker/healthcheck.py /usr/local/bin/tei-worker-healthcheck
RUN sed -i '1i #!/usr/local/bin/python3' /usr/local/bin/tei-worker-healthcheck \
 && chmod 0755 /usr/local/bin/tei-worker-healthcheck \
 && groupadd --gid 10001 worker \
 && useradd --uid 10001 --gid 10001 --home-dir /home/worker --create-home --shell /usr/sbin/nologin worker \
 && mkdir -p /home/worker/.cache /models \
 && chown -R 10001:10001 /home/worker

USER 10001:10001
WORKDIR /home/worker
EXPOSE 80
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["tei-worker-healthcheck"]
LABEL org.opencontainers.image.title="tei-manager-fallback-worker" \
      org.opencontainers.image.description="TEI-compatible embedding/rerank server on transformers (tei-manager)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.tei-manager.worker.build="dockerfile"
ENTRYPOINT ["tei-fallback-worker"]
