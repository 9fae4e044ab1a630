#!/usr/bin/env bash
# Make a Docker Engine reachable: install docker.io with apt when dockerd is missing, start dockerd
# when `docker info` fails, and wait for it. Does nothing when an engine already answers
# (including a remote one via DOCKER_HOST).
#
#   ./scripts/ensure-docker.sh
#
# Needs root (or sudo) only when it has to install or start something.
# TEI_MANAGER_DOCKER_WAIT: seconds to wait for the engine (default 60).
# TEI_MANAGER_DOCKERD_LOG: where a dockerd started here logs (default /var/log/dockerd.log).
set -euo pipefail

WAIT=${TEI_MANAGER_DOCKER_WAIT:-60}
DOCKERD_LOG=${TEI_MANAGER_DOCKERD_LOG:-/var/log/dockerd.log}

log() { printf '==> [docker] %s\n' "$*" >&2; }
die() { printf 'error: [docker] %s\n' "$*" >&2; exit 1; }

engine_ready() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if engine_ready; then
  log "Docker Engine reachable ($(docker version --format 'server {{.Server.Version}}' 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 \
    || die "no Docker Engine is reachable and installing/starting one needs root: run this script as root, or start Docker yourself"
  SUDO=(sudo -n)
  "${SUDO[@]}" true 2>/dev/null || SUDO=(sudo)
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 \
    || die "dockerd is not installed and apt-get is not available: install a Docker Engine for this system (https://docs.docker.com/engine/install/)"
  log "installing docker.io with apt (apt-get update first)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q || die "apt-get update failed (network or apt sources?); see the message above"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io \
    || die "apt-get install docker.io failed; see the message above"
fi

if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != unix://* ]]; then
  die "DOCKER_HOST=$DOCKER_HOST does not answer (docker info fails); start that engine, or unset DOCKER_HOST to use a local dockerd"
fi

pidfile=/var/run/docker.pid
if [[ -s "$pidfile" ]] && "${SUDO[@]}" kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
  log "dockerd is running (pid $(cat "$pidfile")) but not answering yet; waiting"
else
  log "starting dockerd in the background (log: $DOCKERD_LOG)"
  "${SUDO[@]}" sh -c 'nohup setsid dockerd >>"$1" 2>&1 </dev/null &' sh "$DOCKERD_LOG" \
    || die "could not start dockerd"
fi

for ((i = 0; i < WAIT; i++)); do
  if docker info >/dev/null 2>&1; then
    log "Docker Engine ready after ${i} s ($(docker version --format 'server {{.Server.Version}}' 2>/dev/null || echo 'version unknown'))"
    exit 0
  fi
  if (( i > 0 && i % 10 == 0 )); then log "still waiting for dockerd (${i}/${WAIT} s)"; fi
  sleep 1
done

{
  echo "error: [docker] the Docker Engine did not answer within ${WAIT} s."
  if [[ -r "$DOCKERD_LOG" ]]; then
    echo "Last lines of $DOCKERD_LOG:"
    tail -n 25 "$DOCKERD_LOG" | sed 's/^/    /'
  fi
  echo "docker info says: $(docker info 2>&1 >/dev/null | tail -n 3)"
  echo "Fix the cause above and run ./scripts/ensure-docker.sh again (or raise TEI_MANAGER_DOCKER_WAIT)."
  echo "Non-root users also need access to /var/run/docker.sock (the 'docker' group)."
} >&2
exit 1
