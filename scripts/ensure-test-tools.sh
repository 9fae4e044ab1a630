#!/usr/bin/env bash
# Debian tools the test suite uses besides Docker: promtool (package prometheus) checks the
# shipped alert rules and runs their unit tests. Idempotent; needs root (or sudo) for apt.
set -euo pipefail

log() { printf '==> [test-tools] %s\n' "$*" >&2; }
die() { printf 'error: [test-tools] %s\n' "$*" >&2; exit 1; }

if command -v promtool >/dev/null 2>&1; then
  log "promtool already installed ($(promtool --version 2>&1 | head -n 1))"
  exit 0
fi
SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "promtool is missing and installing it needs root: run 'apt-get install -y prometheus' as root"
  SUDO=sudo
fi
log "installing promtool (Debian package prometheus)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || die "apt-get update failed (see above); check the package mirror"
# --no-install-recommends: only promtool is needed, not the exporters and web assets.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
  || die "apt-get install prometheus failed (see above)"
command -v promtool >/dev/null 2>&1 || die "the prometheus package installed no promtool"
log "promtool installed ($(promtool --version 2>&1 | head -n 1))"
