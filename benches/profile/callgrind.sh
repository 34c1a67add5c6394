#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (repeatable where timings are not):
# scoregate and nginx, each proxying the same POST to the same nginx backend over HTTP/1.1
# keep-alive, 5,000 requests on 8 connections (h2load --h1) after 200 unrecorded ones.
# Prints each total per request and scoregate's self cost by crate and by function.
#
#   benches/profile/callgrind.sh              # builds scoregate with the `profiling` profile
#   PROTO=https benches/profile/callgrind.sh  # the same over TLS 1.3 (both proxies terminate TLS;
#                                             # the 8 handshakes are counted with the 5,000 requests)
#   SCOREGATE_BIN=path benches/profile/callgrind.sh   # a binary with line tables (the release
#                                             # profile strips them; `--profile profiling` keeps them)
#
# Needs valgrind, h2load (nghttp2-client) and nginx; installs them with apt-get when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
# The processes this script starts, ended by their ids on the way out.
STARTED=()
trap 'for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT

BASE=18280
TOOLS="valgrind:valgrind"
# shellcheck source=benches/profile/setup.sh
source "$ROOT/benches/profile/setup.sh"
nginx -c "$WORK/backend.conf" -e "$WORK/backend-error.log" &
STARTED+=($!)

# profile LABEL URL COMMAND...: runs COMMAND under callgrind, loads URL, prints the total.
profile() {
  local label=$1 url=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$label.%p" "$@" > "$WORK/$label.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  wait_ready "$url"
  local load=(h2load --h1 -c 8 -d "$WORK/body.json" -H "Authorization: Bearer $KEY" "$url")
  "${load[@]}" -n 200 > /dev/null
  callgrind_control -z "$pid" > /dev/null
  local report
  report=$("${load[@]}" -n "$REQUESTS")
  grep -E '^requests:' <<<"$report"
  if ! grep -q "$REQUESTS succeeded" <<<"$report"; then
    echo "$label: not every request succeeded; the count would not be of proxied requests (work directory: $WORK)" >&2
    KEEP_WORK=1
    exit 1
  fi
  callgrind_control -d "$pid" > /dev/null
  sleep 1
  kill -INT "$pid"
  sleep 3
  # The first dump holds the measured load alone (counted from the zeroing above); the file
  # without a number is written at the exit and holds only what came after the dump.
  local out="$WORK/cg.$label.$pid.1"
  local total
  total=$(callgrind_annotate --auto=no "$out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "$label: $((total / REQUESTS)) instructions per request"
  PROFILE_OUT=$out
}

profile nginx "$NGINX_URL" "${NGINX_CMD[@]}"
profile scoregate "$SCOREGATE_URL" "${SCOREGATE_CMD[@]}"
echo
python3 "$ROOT/benches/profile/by_crate.py" "$PROFILE_OUT" "$REQUESTS"
