#!/usr/bin/env bash
# drover's HTTP API against its own OpenAPI description (GET /openapi.json), fuzzed by
# schemathesis (PyPI, pinned) against the real binary on the embedded default, on loopback:
# no 5xx, and every status, content type, header and body as described. Bounded: at most
# 30 examples per operation and 90 s of generation. POST /actors/{path}/kill is left out (a
# generated path could name the root); every other admin route runs with the admin token and
# destructive actions on. Called by tests/run.sh after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m[tests/schemathesis.sh]\033[0m %s\n' "$*" >&2; }

VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/schemathesis" ]; then
  log "installing schemathesis 4.32.5 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check schemathesis==4.32.5
fi

BIN=target/debug/drover
[ -x "$BIN" ] || cargo build --locked --bin drover
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
env -i PATH="$PATH" HOME="$HOME" \
  DROVER_HTTP__ADDR="127.0.0.1:$PORT" DROVER_STORE__URL="sqlite://$WORK/drover.db?mode=rwc" \
  DROVER_API__TOKEN=schemathesis-api DROVER_ADMIN__TOKEN=schemathesis-admin \
  DROVER_ADMIN__ALLOW_DESTRUCTIVE_ACTIONS=true DROVER_LOG__LEVEL=warn \
  "$BIN" serve >"$WORK/drover.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/livez" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/drover.log" >&2; log "drover did not start"; exit 1; }
  sleep 0.1
done

log "schemathesis against http://127.0.0.1:$PORT/openapi.json"
rc=0
timeout 300 "$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  -H "Authorization: Bearer schemathesis-admin" --exclude-path-regex '^/actors/' \
  --max-examples 30 --max-time 90 --seed 1 --no-color || rc=$?
if ! kill -0 "$PID" 2>/dev/null; then
  cat "$WORK/drover.log" >&2
  log "drover died during the run"
  exit 1
fi
[ "$rc" -eq 0 ] || { tail -50 "$WORK/drover.log" >&2; log "schemathesis found failures"; exit "$rc"; }
log "the API matches its description"
