#!/usr/bin/env bash
# Build the local fallback-worker image without a registry, from this host's Python (which
# ./scripts/install.sh gave the [worker] extra: torch, transformers, ...) and the repository's
# fallback_worker package.
#
#   ./scripts/build-worker-image.sh [--force]
#
# Prints the image tag on stdout (progress goes to stderr): $TEI_MANAGER_WORKER_IMAGE, default
# tei-manager/fallback-worker:dev. Two steps, each skipped when its result exists already:
#   1. base image tei-manager/fallback-worker-base:<hash of Python, distributions, build scripts>:
#      a root filesystem assembled by scripts/worker_rootfs.py, loaded with `docker import`;
#   2. the tagged image: the base plus fallback_worker/ (docker create, docker cp, docker commit),
#      labelled org.tei-manager.worker.content-hash=<base hash + worker sources>.
# --force rebuilds both. For an image built from python:3.11-slim through a registry, see
# docker/fallback-worker.Dockerfile.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
TAG=${TEI_MANAGER_WORKER_IMAGE:-tei-manager/fallback-worker:dev}
BASE_REPO=tei-manager/fallback-worker-base
HASH_LABEL=org.tei-manager.worker.content-hash
BASE_LABEL=org.tei-manager.worker.base-hash
LOCK=${TMPDIR:-/tmp}/tei-manager-worker-image.lock
FORCE=0

log() { printf '==> [worker-image] %s\n' "$*" >&2; }
die() { printf 'error: [worker-image] %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument '$arg' (usage: $0 [--force])" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed: run ./scripts/ensure-docker.sh"
docker info >/dev/null 2>&1 || die "no Docker Engine is reachable (docker info fails): run ./scripts/ensure-docker.sh, or set DOCKER_HOST"
"$PY" -c 'import packaging' 2>/dev/null \
  || die "$PY lacks the 'packaging' module (and likely the worker's packages): run ./scripts/install.sh first"

# One build at a time (test runs and the test suite may ask concurrently).
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || die "another build holds $LOCK for more than 30 minutes"
fi

label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

hashes=$("$PY" scripts/worker_rootfs.py hash)
read -r base_hash hash site_dir <<<"$hashes"
if [[ "$FORCE" == 0 && "$(label_of "$TAG" "$HASH_LABEL")" == "$hash" ]]; then
  log "$TAG is up to date (content hash $hash)"
  echo "$TAG"
  exit 0
fi

start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/tei-worker-image.XXXXXX")
container=""
cleanup() {
  [[ -z "$container" ]] || docker rm -f "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. the base image: interpreter, distributions, libraries, user, entry point, health check
base="$BASE_REPO:$base_hash"
if [[ "$FORCE" == 1 || "$(label_of "$base" "$BASE_LABEL")" != "$base_hash" ]]; then
  prefix=$("$PY" -c 'import sys; print(sys.base_prefix)')
  versions=$("$PY" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")')
  home=/home/worker
  log "building the base image $base from $prefix ($versions)"
  log "laying out the root filesystem"
  "$PY" scripts/worker_rootfs.py layout "$work/rootfs" >&2

  log "importing the root filesystem into the Docker Engine (about 1 GB, streamed)"
  set +o pipefail
  tar --create --null --no-recursion --numeric-owner --mode=a+rX --warning=no-file-changed -f - \
      -C / -T "$work/rootfs.host.list" \
      -C "$work/rootfs" -T "$work/rootfs.staging.list" \
    | docker import \
      --message "tei-manager fallback worker base, local rootfs build ($versions)" \
      --change "ENV PATH=/usr/local/bin:$prefix/bin:/usr/bin:/bin" \
      --change "ENV HOME=$home HF_HOME=$home/.cache/huggingface LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1" \
      --change "ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PORT=80" \
      --change "USER 10001:10001" \
      --change "WORKDIR $home" \
      --change "EXPOSE 80" \
      --change 'ENTRYPOINT ["tei-fallback-worker"]' \
      --change 'HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["tei-worker-healthcheck"]' \
      --change "LABEL $BASE_LABEL=$base_hash" \
      --change "LABEL org.opencontainers.image.title=tei-manager-fallback-worker org.tei-manager.worker.build=local-rootfs" \
      --change "LABEL org.tei-manager.worker.versions=\"$versions\"" \
      - >"$work/base-id"
  statuses=("${PIPESTATUS[@]}")
  set -o pipefail
  # tar: 0 = fine, 1 = a file changed while read (e.g. a .pyc being written); 2 = fatal.
  (( statuses[0] <= 1 )) || die "tar failed (exit ${statuses[0]}) while reading the root filesystem; see its message above"
  (( statuses[1] == 0 )) || die "docker import failed (exit ${statuses[1]}); see its message above (disk space? docker system df)"
  base_id=$(tr -d '[:space:]' <"$work/base-id")
  log "base smoke test: torch and transformers import as uid 10001, no network"
  docker run --rm --network none --entrypoint python3 "$base_id" -c \
    'import os, torch, transformers, tokenizers; assert os.getuid() == 10001; open(os.path.join(os.environ["HOME"], ".cache", "probe"), "w").close(); print("torch", torch.__version__, "transformers", transformers.__version__)' >&2 \
    || die "the base image cannot import torch/transformers as uid 10001 (image $base_id kept untagged: docker run --rm -it --entrypoint sh $base_id)"
  docker tag "$base_id" "$base"
  log "base image built in $((SECONDS - start)) s"
else
  log "base image $base is up to date"
fi

# ---- 2. the worker's code on top
layer_start=$SECONDS
old_id=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "adding fallback_worker/ to $base"
container=$(docker create "$base")
tar --create --numeric-owner --owner=0 --group=0 --mode=a+rX --exclude=__pycache__ --exclude='*.pyc' -f - fallback_worker \
  | docker cp - "$container:$site_dir" \
  || die "could not copy fallback_worker/ into the image (docker cp failed; see above)"
image_id=$(docker commit --change "LABEL $HASH_LABEL=$hash" "$container")
docker rm "$container" >/dev/null && container=""
docker run --rm --network none "$image_id" --help >/dev/null \
  || die "'tei-fallback-worker --help' fails in the new image (image $image_id kept untagged; docker run --rm $image_id --help)"

docker tag "$image_id" "$TAG"
if [[ -n "$old_id" && "$old_id" != "$image_id" ]]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # still used by a container, or tagged elsewhere: leave it
fi
# Older bases go, unless an image is still built on them (another checkout's or virtual
# environment's worker image: Docker refuses to remove a parent) or a container uses them.
for old in $(docker images "$BASE_REPO" --format '{{.Repository}}:{{.Tag}}'); do
  [[ "$old" == "$base" ]] || docker image rm "$old" >/dev/null 2>&1 || true
done
size=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $((SECONDS - start)) s (worker layer and smoke test $((SECONDS - layer_start)) s), $((size / 1000000)) MB"
echo "$TAG"
