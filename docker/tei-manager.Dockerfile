# tei-manager itself (the CLI and the multi-tenant gateway) as a container image, built from
# python:3.11-slim through a registry. It is the image `tei-manager export kubernetes` and
# `--backend kubernetes` run as the gateway (`kubernetes.gateway_image`):
#
#   docker build -f docker/tei-manager.Dockerfile -t tei-manager/tei-manager:0.1.0 .
#   docker tag tei-manager/tei-manager:0.1.0 registry.example.com/tei-manager:0.1.0
#   docker push registry.example.com/tei-manager:0.1.0
#   # profile: kubernetes: {gateway_image: registry.example.com/tei-manager:0.1.0}
#
# The tag tei-manager/tei-manager:<version> is `gateway_image`'s default, so a cluster that loads
# local images (`kind load docker-image`, `minikube image load`) needs no profile change.
#
# Holds tei-manager with the extras a gateway in a cluster uses: [redis] (gateway.quota_store
# shared by the replicas) and [kubernetes] (`serve --backend kubernetes`); no torch, no TEI, no
# fallback worker (docker/fallback-worker.Dockerfile is that image). Runs as uid 10001 (the
# exported pods' runAsUser) and works with a read-only root filesystem (HOME and caches in /tmp).
#
# This file is not built by the tests or CI: they have no registry to pull python:3.11-slim from.
# There `scripts/build-worker-image.sh --target gateway` builds an equivalent image,
# tei-manager/tei-manager:dev (same user, entry point, health check, port), from the host's Python
# with `docker import`; that is the image tests/integration/test_gateway_image.py runs.
#
# Probe: HEALTHCHECK below runs `tei-manager-healthcheck` (docker/healthcheck.py: GET /health on the
# `--port` of `tei-manager serve`, default 8080); in Kubernetes the exported Deployment's readiness
# and liveness probes call GET /health on port 8080 themselves.
#
#   docker run --rm -p 127.0.0.1:8080:8080 -v "$PWD/profiles:/profiles:ro" IMAGE \
#     serve /profiles/my.yaml --backend kubernetes --host 0.0.0.0 --port 8080
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tei-manager

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tei_manager ./tei_manager
COPY fallback_worker ./fallback_worker
# fallback_worker/ only because pyproject.toml packages it; its [worker] extra (torch) stays out.
RUN pip install '.[redis,kubernetes]' \
 && python -c "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch')))" \
 && rm -rf /src

COPY docker/healthcheck.py /usr/local/bin/tei-manager-healthcheck
RUN sed -i '1i #!/usr/local/bin/python3' /usr/local/bin/tei-manager-healthcheck \
 && chmod 0755 /usr/local/bin/tei-manager-healthcheck \
 && groupadd --gid 10001 tei-manager \
 && useradd --uid 10001 --gid 10001 --home-dir /home/tei-manager --create-home --shell /usr/sbin/nologin tei-manager

USER 10001:10001
WORKDIR /home/tei-manager
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["tei-manager-healthcheck"]
LABEL org.opencontainers.image.title="tei-manager" \
      org.opencontainers.image.description="tei-manager CLI and multi-tenant TEI gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.tei-manager.gateway.build="dockerfile"
ENTRYPOINT ["tei-manager"]
CMD ["--help"]
