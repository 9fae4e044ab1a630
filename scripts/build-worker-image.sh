#!/usr/bin/env bash
# Build the local fallback-worker image without a registry: a root filesystem taken from this
# host's Python (which ./scripts/install.sh gave the [worker] extra: torch, transformers, ...)
# plus the repository's fallback_worker package, loaded with `docker import`.
#
#   ./scripts/build-worker-image.sh [--force]
#
# Prints the image tag on stdout (progress goes to stderr). The tag is
# $TEI_MANAGER_WORKER_IMAGE, default tei-manager/fallback-worker:dev. The image carries the
# label org.tei-manager.worker.content-hash (worker sources + Python and distribution versions +
# this script); when the tagged image already has the current hash nothing is rebuilt.
# For an image built from python:3.11-slim through a registry, see docker/fallback-worker.Dockerfile.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
TAG=${TEI_MANAGER_WORKER_IMAGE:-tei-manager/fallback-worker:dev}
HASH_LABEL=org.tei-manager.worker.content-hash
LOCK=${TMPDIR:-/tmp}/tei-manager-worker-image.lock
FORCE=0

log() { printf '==> [worker-image] %s\n' "$*" >&2; }
die() { printf 'error: [worker-image] %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument '$arg' (usage: $0 [--force])" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed: run ./scripts/ensure-docker.sh"
docker info >/dev/null 2>&1 || die "no Docker Engine is reachable (docker info fails): run ./scripts/ensure-docker.sh, or set DOCKER_HOST"
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required: apt-get install -y tar"
command -v ldd >/dev/null 2>&1 || die "ldd is required: apt-get install -y libc-bin"
"$PY" -c 'import packaging' 2>/dev/null \
  || die "$PY lacks the 'packaging' module (and likely the worker's packages): run ./scripts/install.sh first"

# One build at a time (test runs and the test suite may ask concurrently).
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || die "another build holds $LOCK for more than 30 minutes"
fi

hash=$("$PY" scripts/worker_rootfs.py hash)
current=$(docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$TAG" 2>/dev/null || true)
if [[ "$FORCE" == 0 && "$current" == "$hash" ]]; then
  log "$TAG is up to date (content hash $hash)"
  echo "$TAG"
  exit 0
fi
old_id=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)

start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/tei-worker-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building $TAG (content hash $hash) from $("$PY" -c 'import sys; print(sys.base_prefix)')"
log "laying out the root filesystem"
"$PY" scripts/worker_rootfs.py layout "$work/rootfs" >&2

prefix=$("$PY" -c 'import sys; print(sys.base_prefix)')
versions=$("$PY" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")')
home=/home/worker

log "importing the root filesystem into the Docker Engine (about 1 GB, streamed)"
set +o pipefail
tar --create --null --no-recursion --numeric-owner --mode=a+rX --warning=no-file-changed -f - \
    -C / -T "$work/rootfs.host.list" \
    -C "$work/rootfs" -T "$work/rootfs.staging.list" \
  | docker import \
    --message "tei-manager fallback worker, local rootfs build ($versions)" \
    --change "ENV PATH=/usr/local/bin:$prefix/bin:/usr/bin:/bin" \
    --change "ENV HOME=$home HF_HOME=$home/.cache/huggingface LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1" \
    --change "ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PORT=80" \
    --change "USER 10001:10001" \
    --change "WORKDIR $home" \
    --change "EXPOSE 80" \
    --change 'ENTRYPOINT ["tei-fallback-worker"]' \
    --change 'HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["tei-worker-healthcheck"]' \
    --change "LABEL $HASH_LABEL=$hash" \
    --change "LABEL org.opencontainers.image.title=tei-manager-fallback-worker org.tei-manager.worker.build=local-rootfs" \
    --change "LABEL org.tei-manager.worker.versions=\"$versions\"" \
    - >"$work/image-id"
statuses=("${PIPESTATUS[@]}")
set -o pipefail
# tar: 0 = fine, 1 = a file changed while read (e.g. a .pyc being written); 2 = fatal.
(( statuses[0] <= 1 )) || die "tar failed (exit ${statuses[0]}) while reading the root filesystem; see its message above"
(( statuses[1] == 0 )) || die "docker import failed (exit ${statuses[1]}); see its message above (disk space? docker system df)"
image_id=$(tr -d '[:space:]' <"$work/image-id")
import_done=$SECONDS

log "smoke test: imports and entry point as uid 10001, no network"
docker run --rm --network none --entrypoint python3 "$image_id" -c \
  'import os, torch, transformers, tokenizers, fallback_worker; assert os.getuid() == 10001; open(os.path.join(os.environ["HOME"], ".cache", "probe"), "w").close(); print("torch", torch.__version__, "transformers", transformers.__version__)' >&2 \
  || die "the new image cannot import the worker's packages (image $image_id kept untagged for inspection: docker run --rm -it --entrypoint sh $image_id)"
docker run --rm --network none "$image_id" --help >/dev/null \
  || die "'tei-fallback-worker --help' fails in the new image (image $image_id kept untagged; docker run --rm $image_id --help)"

docker tag "$image_id" "$TAG"
if [[ -n "$old_id" && "$old_id" != "$image_id" ]]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # still used by a container: leave it
fi
size=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $((SECONDS - start)) s (import $((import_done - start)) s, smoke test $((SECONDS - import_done)) s), $((size / 1000000)) MB"
echo "$TAG"
