#!/usr/bin/env bash
# Build a local image without a registry, from this host's Python (which ./scripts/install.sh gave
# the project's packages) and a package of this repository:
#
#   ./scripts/build-worker-image.sh [--target worker|gateway] [--force]
#
#   --target worker   (default) the fallback worker: the [worker] extra (torch, transformers, ...) and
#                     fallback_worker/; tag $TEI_MANAGER_WORKER_IMAGE, default tei-manager/fallback-worker:dev
#   --target gateway  tei-manager itself (CLI and gateway, what `export kubernetes` runs as the
#                     gateway): its dependencies, the [redis] and [kubernetes] extras and tei_manager/,
#                     no torch; tag $TEI_MANAGER_GATEWAY_IMAGE, default tei-manager/tei-manager:dev
#
# Prints the image tag on stdout (progress goes to stderr). Two steps, each skipped when its
# result exists already:
#   1. base image tei-manager/<name>-base:<hash of Python, distributions, build scripts>:
#      a root filesystem assembled by scripts/worker_rootfs.py, loaded with `docker import`;
#   2. the tagged image: the base plus the package (docker create, docker cp, docker commit),
#      labelled org.tei-manager.<target>.content-hash=<base hash + package sources>.
# --force rebuilds both. For images built from python:3.11-slim through a registry, see
# docker/fallback-worker.Dockerfile and docker/tei-manager.Dockerfile.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
TARGET=worker
LOCK=${TMPDIR:-/tmp}/tei-manager-worker-image.lock
FORCE=0

log() { printf '==> [%s-image] %s\n' "$TARGET" "$*" >&2; }
die() { printf 'error: [%s-image] %s\n' "$TARGET" "$*" >&2; exit 1; }
usage="usage: $0 [--target worker|gateway] [--force]"

while (( $# )); do
  case "$1" in
    --force) FORCE=1 ;;
    --target) (( $# > 1 )) || die "--target needs a value ($usage)"; TARGET=$2; shift ;;
    --target=*) TARGET=${1#--target=} ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument '$1' ($usage)" ;;
  esac
  shift
done

# What differs between the two images; everything else below is shared.
case "$TARGET" in
  worker)
    TAG=${TEI_MANAGER_WORKER_IMAGE:-tei-manager/fallback-worker:dev}
    BASE_REPO=tei-manager/fallback-worker-base
    PACKAGE=fallback_worker
    HOME_DIR=/home/worker
    TITLE=tei-manager-fallback-worker
    DESCRIPTION="tei-manager fallback worker base"
    VERSIONS_PY='import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'
    ENV_CHANGES=(
      --change "ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME=$HOME_DIR/.cache/huggingface PORT=80"
      --change "EXPOSE 80"
      --change 'ENTRYPOINT ["tei-fallback-worker"]'
      --change 'HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["tei-worker-healthcheck"]'
    )
    # torch and transformers import as the image's user, who can write its caches.
    BASE_SMOKE='import os, torch, transformers, tokenizers; assert os.getuid() == 10001; open(os.path.join(os.environ["HOME"], ".cache", "probe"), "w").close(); print("torch", torch.__version__, "transformers", transformers.__version__)'
    FINAL_SMOKE=(--help)
    ;;
  gateway)
    TAG=${TEI_MANAGER_GATEWAY_IMAGE:-tei-manager/tei-manager:dev}
    BASE_REPO=tei-manager/tei-manager-base
    PACKAGE=tei_manager
    HOME_DIR=/home/tei-manager
    TITLE=tei-manager
    DESCRIPTION="tei-manager CLI and gateway base"
    VERSIONS_PY='import sys, kubernetes, redis; print(f"python {sys.version.split()[0]}, kubernetes {kubernetes.__version__}, redis {redis.__version__}")'
    ENV_CHANGES=(
      --change "EXPOSE 8080"
      --change 'ENTRYPOINT ["tei-manager"]'
      --change 'CMD ["--help"]'
      --change 'HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["tei-manager-healthcheck"]'
    )
    # The gateway's libraries import as the image's user; the worker's must not be there at all.
    BASE_SMOKE='import os, importlib.util as u, uvicorn, starlette, httpx, pydantic, typer, kubernetes, redis, docker, yaml; assert os.getuid() == 10001; missing = [m for m in ("torch", "transformers") if u.find_spec(m)]; assert not missing, missing; print("kubernetes", kubernetes.__version__, "redis", redis.__version__)'
    FINAL_SMOKE=(--version)
    ;;
  *) die "unknown --target '$TARGET' ($usage)" ;;
esac
HASH_LABEL=org.tei-manager.$TARGET.content-hash
BASE_LABEL=org.tei-manager.$TARGET.base-hash

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed: run ./scripts/ensure-docker.sh"
docker info >/dev/null 2>&1 || die "no Docker Engine is reachable (docker info fails): run ./scripts/ensure-docker.sh, or set DOCKER_HOST"
"$PY" -c 'import packaging' 2>/dev/null \
  || die "$PY lacks the 'packaging' module (and likely the image's packages): run ./scripts/install.sh first"

# One build at a time (test runs and the test suite may ask concurrently).
exec 9>"$LOCK"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || die "another build holds $LOCK for more than 30 minutes"
fi

label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

hashes=$("$PY" scripts/worker_rootfs.py --target "$TARGET" hash)
read -r base_hash hash site_dir <<<"$hashes"
if [[ "$FORCE" == 0 && "$(label_of "$TAG" "$HASH_LABEL")" == "$hash" ]]; then
  log "$TAG is up to date (content hash $hash)"
  echo "$TAG"
  exit 0
fi

start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/tei-$TARGET-image.XXXXXX")
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
  versions=$("$PY" -c "$VERSIONS_PY")
  home=$HOME_DIR
  log "building the base image $base from $prefix ($versions)"
  log "laying out the root filesystem"
  "$PY" scripts/worker_rootfs.py --target "$TARGET" layout "$work/rootfs" >&2

  log "importing the root filesystem into the Docker Engine (streamed)"
  set +o pipefail
  tar --create --null --no-recursion --numeric-owner --mode=a+rX --warning=no-file-changed -f - \
      -C / -T "$work/rootfs.host.list" \
      -C "$work/rootfs" -T "$work/rootfs.staging.list" \
    | docker import \
      --message "$DESCRIPTION, local rootfs build ($versions)" \
      --change "ENV PATH=/usr/local/bin:$prefix/bin:/usr/bin:/bin" \
      --change "ENV HOME=$home LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1" \
      --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
      --change "USER 10001:10001" \
      --change "WORKDIR $home" \
      "${ENV_CHANGES[@]}" \
      --change "LABEL $BASE_LABEL=$base_hash" \
      --change "LABEL org.opencontainers.image.title=$TITLE org.tei-manager.$TARGET.build=local-rootfs" \
      --change "LABEL org.tei-manager.$TARGET.versions=\"$versions\"" \
      - >"$work/base-id"
  statuses=("${PIPESTATUS[@]}")
  set -o pipefail
  # tar: 0 = fine, 1 = a file changed while read (e.g. a .pyc being written); 2 = fatal.
  (( statuses[0] <= 1 )) || die "tar failed (exit ${statuses[0]}) while reading the root filesystem; see its message above"
  (( statuses[1] == 0 )) || die "docker import failed (exit ${statuses[1]}); see its message above (disk space? docker system df)"
  base_id=$(tr -d '[:space:]' <"$work/base-id")
  log "base smoke test: its libraries import as uid 10001, no network"
  docker run --rm --network none --entrypoint python3 "$base_id" -c "$BASE_SMOKE" >&2 \
    || die "the base image fails its smoke test as uid 10001 (image $base_id kept untagged: docker run --rm -it --entrypoint sh $base_id)"
  docker tag "$base_id" "$base"
  log "base image built in $((SECONDS - start)) s"
else
  log "base image $base is up to date"
fi

# ---- 2. the package's code on top
layer_start=$SECONDS
old_id=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
log "adding $PACKAGE/ to $base"
container=$(docker create "$base")
tar --create --numeric-owner --owner=0 --group=0 --mode=a+rX --exclude=__pycache__ --exclude='*.pyc' -f - "$PACKAGE" \
  | docker cp - "$container:$site_dir" \
  || die "could not copy $PACKAGE/ into the image (docker cp failed; see above)"
image_id=$(docker commit --change "LABEL $HASH_LABEL=$hash" "$container")
docker rm "$container" >/dev/null && container=""
docker run --rm --network none "$image_id" "${FINAL_SMOKE[@]}" >/dev/null \
  || die "'${FINAL_SMOKE[*]}' fails in the new image (image $image_id kept untagged; docker run --rm $image_id ${FINAL_SMOKE[*]})"

docker tag "$image_id" "$TAG"
if [[ -n "$old_id" && "$old_id" != "$image_id" ]]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # still used by a container, or tagged elsewhere: leave it
fi
# Older bases go, unless an image is still built on them (another checkout's or virtual
# environment's image) or a container uses them. Removed by ID, not by tag: Docker refuses to
# delete the ID of a parent image but would untag it, and the other build would then lay out
# and import its base all over again.
for old in $(docker images "$BASE_REPO" --format '{{.Repository}}:{{.Tag}}'); do
  [[ "$old" == "$base" ]] && continue
  old_base_id=$(docker image inspect --format '{{.Id}}' "$old" 2>/dev/null) || continue
  docker image rm "$old_base_id" >/dev/null 2>&1 || true
done
size=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $((SECONDS - start)) s ($PACKAGE layer and smoke test $((SECONDS - layer_start)) s), $((size / 1000000)) MB"
echo "$TAG"
