#!/usr/bin/env bash
# System calls per proxied request, counted by `strace -c`: scoregate and nginx, each proxying
# the same POST to the same nginx backend over HTTP/1.1 keep-alive, 5,000 requests on 8
# connections (h2load --h1) after 200 unrecorded ones. Says whether a proxy writes each response
# once (one TLS record, one flush) or in pieces.
#
#   benches/profile/syscalls.sh               # plain HTTP; builds scoregate as callgrind.sh does
#   PROTO=https benches/profile/syscalls.sh   # over TLS 1.3 (both proxies terminate TLS)
#   SCOREGATE_BIN=path benches/profile/syscalls.sh
#
# Needs strace, h2load (nghttp2-client) and nginx; installs them with apt-get when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

BASE=28380
TOOLS="strace:strace"
# shellcheck source=benches/profile/setup.sh
source "$ROOT/benches/profile/setup.sh"
nginx -c "$WORK/backend.conf" -e "$WORK/backend-error.log" &
PIDS+=($!)

# count LABEL URL COMMAND...: starts COMMAND, loads URL under strace, prints calls per request.
count() {
  local label=$1 url=$2
  shift 2
  "$@" > "$WORK/$label.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_ready "$url"
  local load=(h2load --h1 -c 8 -d "$WORK/body.json" -H "Authorization: Bearer $KEY" "$url")
  "${load[@]}" -n 200 > /dev/null
  strace -c -f -p "$pid" -o "$WORK/$label.strace" 2>/dev/null &
  local tracer=$!
  sleep 1
  local report
  report=$("${load[@]}" -n "$REQUESTS")
  grep -q "$REQUESTS succeeded" <<<"$report" || { echo "$label: not every request succeeded: $(grep -E "^requests:" <<<"$report")" >&2; exit 1; }
  kill -INT "$tracer"
  wait "$tracer" || true
  echo "$label ($PROTO): system calls per request"
  awk -v n="$REQUESTS" 'NR > 2 && $4 ~ /^[0-9]+$/ && $NF != "total" && $4 / n >= 0.01 {
    printf "  %-14s %.2f\n", $NF, $4 / n }' "$WORK/$label.strace"
}

count nginx "$NGINX_URL" "${NGINX_CMD[@]}"
count scoregate "$SCOREGATE_URL" "${SCOREGATE_CMD[@]}"
