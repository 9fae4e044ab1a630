#!/usr/bin/env bash
# Debian tools the test suite uses besides Docker: promtool (package prometheus) checks the
# shipped alert rules and runs their unit tests; redis-server backs the shared quota store's
# tests (each test starts its own server on a free loopback port). Idempotent; needs root (or
# sudo) for apt.
set -euo pipefail

log() { printf '==> [test-tools] %s\n' "$*" >&2; }
die() { printf 'error: [test-tools] %s\n' "$*" >&2; exit 1; }

if command -v promtool >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then
  log "promtool and redis-server already installed ($(promtool --version 2>&1 | head -n 1); $(redis-server --version))"
  exit 0
fi
SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "promtool or redis-server is missing and installing them needs root: run 'apt-get install -y prometheus redis-server' as root"
  SUDO=sudo
fi
log "installing promtool (Debian package prometheus) and redis-server"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || die "apt-get update failed (see above); check the package mirror"
# --no-install-recommends: only promtool is needed, not the exporters and web assets. The tests
# start redis-server themselves; the Debian service it comes with is not needed.
$SUDO apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null \
  || die "apt-get install prometheus redis-server failed (see above)"
command -v promtool >/dev/null 2>&1 || die "the prometheus package installed no promtool"
command -v redis-server >/dev/null 2>&1 || die "the redis-server package installed no redis-server"
log "installed $(promtool --version 2>&1 | head -n 1); $(redis-server --version)"
