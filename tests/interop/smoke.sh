#!/usr/bin/env bash
# Direct smoke test, no Sluice in between: peer.mjs (Fedify sender) -> upstream.mjs
# (Fedify instance) on loopback.  Asserts that every activity sent with a valid
# signature (draft-cavage and RFC 9421) is accepted, and that tampered requests
# are refused.  Usage: bash tests/interop/smoke.sh   (installs node_modules if absent)
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules ] || npm ci --no-audit --no-fund >/dev/null
N="${N:-5}"
LOGS="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
pass=0; fail=0

# wait_for FILE PATTERN [SECONDS]: wait until FILE has a line matching PATTERN
wait_for() {
  for _ in $(seq 1 $((${3:-30} * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $2 in $1" >&2; cat "$1" >&2; return 1
}
port_of() { grep -m1 '"ready":true' "$1" | sed 's/.*"port":\([0-9]*\).*/\1/'; }

# check NAME EXPECT PEERLOG: compare what the peer sent with what upstream logged.
#   EXPECT=accepted: every activity got 2xx and upstream accepted it (same scheme)
#   EXPECT=refused:  every activity got 401 and upstream refused it
check() {
  if node --input-type=module - "$2" "$3" "$LOGS/upstream.log" <<'EOF'
import { readFileSync } from "node:fs";
const [expect, peerLog, upLog] = process.argv.slice(2);
const lines = (f) => readFileSync(f, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const sent = lines(peerLog).filter((l) => l.id);
const up = lines(upLog);
const bad = sent.filter((s) => expect === "accepted"
  ? !(s.status >= 200 && s.status < 300 &&
      up.some((u) => u.accepted === s.id && u.scheme === s.scheme && u.verified === true))
  : !(s.status === 401 && up.some((u) => u.refused === s.id) && !up.some((u) => u.accepted === s.id)));
if (sent.length === 0 || bad.length) { console.error(JSON.stringify({ sent: sent.length, bad }, null, 1)); process.exit(1); }
EOF
  then echo "PASS $1 ($(grep -c '"id"' "$3") activities)"; pass=$((pass + 1))
  else echo "FAIL $1"; fail=$((fail + 1)); fi
}

# run_peer NAME EXPECT ARGS...: start a peer, wait until it has sent everything, check.
run_peer() {
  local name="$1" expect="$2"; shift 2
  local log="$LOGS/peer-$name.log"
  node peer.mjs --port 0 --count "$N" "$@" >"$log" 2>"$LOGS/peer-$name.err" &
  local pid=$!; PIDS+=("$pid")
  wait_for "$log" '"done":true' 60
  kill "$pid" 2>/dev/null || true
  check "$name" "$expect" "$log"
}

start=$(date +%s%N)
node upstream.mjs --port 0 >"$LOGS/upstream.log" 2>"$LOGS/upstream.err" &
PIDS+=("$!")
wait_for "$LOGS/upstream.log" '"ready":true'
UP="http://127.0.0.1:$(port_of "$LOGS/upstream.log")"

run_peer personal-both        accepted --scheme both --inbox "$UP/users/bob/inbox"
run_peer shared-both          accepted --scheme both --inbox "$UP/inbox"
run_peer ed25519-proofs       accepted --scheme both --inbox "$UP/users/bob/inbox" --ed25519
run_peer host-header          accepted --scheme both --inbox "$UP/inbox" --host-header instance.test
run_peer rfc9421-authority    accepted --scheme rfc9421 --inbox "$UP/users/bob/inbox" \
  --components "@method,@authority,@path,content-digest,content-type"
run_peer tampered-body        refused  --scheme both --inbox "$UP/users/bob/inbox" --tamper body
run_peer tampered-ctype       refused  --scheme both --inbox "$UP/users/bob/inbox" --tamper content-type

# an unsigned POST is refused too
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/activity+json' \
  --data '{"id":"http://x.test/a","type":"Follow","actor":"http://x.test/u","object":"http://x.test/v"}' "$UP/inbox")
if [ "$code" = 401 ]; then echo "PASS unsigned (401)"; pass=$((pass + 1)); else echo "FAIL unsigned ($code)"; fail=$((fail + 1)); fi

echo "elapsed $(( ($(date +%s%N) - start) / 1000000 )) ms, logs in $LOGS"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
