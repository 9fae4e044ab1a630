#!/usr/bin/env bash
# The quickstart: install tei-manager, start profiles/quickstart.yaml as local processes (the real
# all-MiniLM-L6-v2 on CPU, served by two fallback workers: one for /embed, one for /rerank), then
# call both and print what they answer. Offline: the model ships as a pip package.
#
#   ./scripts/quickstart.sh
#
# Running it again keeps what is already installed and running (apply is idempotent).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PROFILE=profiles/quickstart.yaml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

log() { printf '==> [quickstart] %s\n' "$*" >&2; }
die() { printf 'error: [quickstart] %s\n' "$*" >&2; exit 1; }

./scripts/install.sh

tm=tei-manager
if ! command -v "$tm" >/dev/null 2>&1; then
  tm="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/tei-manager"
  [[ -x "$tm" ]] || die "the tei-manager command was not installed (looked on PATH and in $(dirname "$tm")); re-run ./scripts/install.sh"
fi

log "starting $PROFILE with the process backend (CPU; the first start loads the model, ~10-30 s)"
"$tm" apply "$PROFILE" --backend process \
  || die "'tei-manager apply $PROFILE --backend process' failed (see above); 'tei-manager logs demo-embed' shows a worker's log"

log "calling /embed and /rerank"
status_json=$("$tm" status quickstart --backend process --json) \
  || die "'tei-manager status quickstart --backend process --json' failed (see above)"
"$PY" - "$status_json" <<'PY'
import json, sys, urllib.request

rows = {r["instance"]: r for r in json.loads(sys.argv[1])}

def url(instance):
    row = rows.get(instance)
    if row is None or not row.get("port"):
        sys.exit(f"error: [quickstart] instance {instance!r} is not running (tei-manager status shows: {sorted(rows) or 'nothing'})")
    host = row.get("bind") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{row['port']}"

def post(base, route, body):
    request = urllib.request.Request(base + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    print(f"POST {base}{route} {json.dumps(body)}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except Exception as exc:
        sys.exit(f"error: [quickstart] {base}{route} failed: {exc}")

embed = url("demo-embed")
vectors = post(embed, "/embed", {"inputs": ["Deploying embedding models is easy.", "Rerankers sort search results."]})
for v in vectors:
    print(f"  -> {len(v)}-dim vector [{v[0]:+.4f}, {v[1]:+.4f}, {v[2]:+.4f}, ...]")

rerank = url("demo-rerank")
texts = ["Paris is the capital of France.", "Bananas are rich in potassium.", "France has many cities; its capital is Paris."]
ranks = post(rerank, "/rerank", {"query": "What is the capital of France?", "texts": texts, "return_text": False})
for r in ranks:
    print(f"  -> score {r['score']:.4f}  {texts[r['index']]}")
PY

cat >&2 <<'END'

==> [quickstart] done. The two workers keep running in the background:
      tei-manager status                                            # health, ports, uptime
      tei-manager logs demo-embed                                   # a worker's log
      tei-manager down profiles/quickstart.yaml --backend process   # stop and remove them
END
