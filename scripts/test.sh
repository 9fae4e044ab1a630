#!/usr/bin/env bash
# The test command: install everything the suite needs, make a Docker Engine reachable, build the
# local fallback-worker image, then run pytest. Extra arguments go to pytest:
#
#   ./scripts/test.sh                       # the whole suite
#   ./scripts/test.sh tests/unit -x -q      # a part of it
#
# TEI_MANAGER_TEST_TIMEOUT: seconds before pytest is interrupted (default 4500 = 75 min), so a hung
# test ends the run with pytest's report instead of a CI kill.
# TEI_MANAGER_SKIP_SETUP=1: skip the install/docker/image steps (they are idempotent, but take
# ~20 s even when everything is in place).
# TEI_MANAGER_SKIP_CHECKS=1: skip ruff, mypy and import-linter (they run before pytest otherwise).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
# No test may reach a model hub (none is reachable in CI).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

log() { printf '==> [test] %s\n' "$*" >&2; }

start=$SECONDS
if [[ "${TEI_MANAGER_SKIP_SETUP:-0}" != 1 ]]; then
  TEI_MANAGER_EXTRAS=worker,tui,dev ./scripts/install.sh
  ./scripts/ensure-docker.sh
  ./scripts/ensure-test-tools.sh
  log "building the fallback-worker image (skipped when up to date)"
  TEI_MANAGER_WORKER_IMAGE=$(./scripts/build-worker-image.sh)
  export TEI_MANAGER_WORKER_IMAGE
  log "set-up took $((SECONDS - start)) s"
fi

if [[ "${TEI_MANAGER_SKIP_CHECKS:-0}" != 1 ]]; then
  # Configured in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
  log "ruff"
  "$PY" -m ruff check tei_manager fallback_worker
  log "mypy --strict"
  "$PY" -m mypy
  log "import-linter"
  lint-imports
fi

log "running pytest $*"
# INT first, so pytest prints what failed and what ran before a hang; KILL a minute later.
exec timeout --foreground --signal=INT --kill-after=60 "${TEI_MANAGER_TEST_TIMEOUT:-4500}" \
  "$PY" -m pytest -ra --durations=15 "$@"
