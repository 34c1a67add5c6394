#!/usr/bin/env bash
# The partial-preface flood (issue 13): 5,000 plain connections each send the first 16 bytes of
# the HTTP/2 preface and stop; prints the CPU scoregate spends while they wait.
#
#   benches/e2e/preface-flood.sh                      # builds scoregate like run.sh does
#   SCOREGATE_BIN=path benches/e2e/preface-flood.sh   # a binary you already have
#   CONNS=5000 SECONDS_MEASURED=10                    # the defaults
#
# scoregate runs with a header timeout 5 s longer than the measurement, so every connection
# waits for the rest of its preface throughout it; the timeout closes them afterwards.
# Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CONNS=${CONNS:-5000}
SECONDS_MEASURED=${SECONDS_MEASURED:-10}
PORT=18383
ADMIN=18384

if [[ -z ${SCOREGATE_BIN:-} ]]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/bench-release" \
        cargo build --release --quiet -p scoregate --bin scoregate)
    SCOREGATE_BIN=$ROOT/target/bench-release/release/scoregate
fi
WORK=$(mktemp -d /tmp/scoregate-preface.XXXXXX)
SG_PID=""
cleanup() {
    if [[ -n $SG_PID ]]; then
        kill "$SG_PID" 2>/dev/null || true
        wait "$SG_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n $((CONNS * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rustc --edition 2021 -O -o "$WORK/prefaceflood" "$ROOT/benches/e2e/prefaceflood.rs"
cat >"$WORK/config.yaml" <<EOF
limits: { header_read_timeout_ms: $(((SECONDS_MEASURED + 5) * 1000)) }
EOF
cat >"$WORK/routes.yaml" <<'EOF'
endpoints:
  - name: flood
    keys: { primary: "flood-key-0123456789abcdef" }
    traffic: { blue: 100 }
deployments:
  - name: blue
    endpoint: flood
    pods: ["127.0.0.1:1"]
EOF
"$SCOREGATE_BIN" serve --config "$WORK/config.yaml" --routes "$WORK/routes.yaml" --listen "127.0.0.1:$PORT" \
    --admin-listen "127.0.0.1:$ADMIN" --allow-insecure-connections --access-log off \
    >"$WORK/scoregate.log" 2>&1 &
SG_PID=$!
for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break
    sleep 0.1
done
echo "scoregate $SCOREGATE_BIN (pid $SG_PID), $CONNS connections, ${SECONDS_MEASURED} s measured, load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$WORK/prefaceflood" "127.0.0.1:$PORT" "$CONNS" "$SG_PID" "$SECONDS_MEASURED" "$(getconf CLK_TCK)"
