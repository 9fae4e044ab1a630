#!/usr/bin/env bash
# Download, here, the wheels the GPU check needs and the GPU machine's image lacks (it has torch,
# transformers, tokenizers, numpy, httpx, uvloop, prometheus-client and nvidia-ml-py, but no
# pydantic, starlette, uvicorn or orjson). Versions follow this machine's installation, so the
# check runs the code the test suite ran. Python 3.12, manylinux x86-64.
#
#   benchmarks/gpu/fetch_wheels.sh          # -> .whl/ (ignored by git; carried to the GPU machine)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$DEST"
pins=$("$PY" - <<'PY'
from importlib.metadata import version
for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
             "starlette", "uvicorn", "orjson", "h11", "anyio", "click"):
    print(f"{name}=={version(name)}")
PY
)
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" $pins
ls -1 "$DEST"
