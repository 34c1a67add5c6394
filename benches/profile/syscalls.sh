#!/usr/bin/env bash
# System calls per proxied request, counted by `strace -c`: scoregate and nginx, each proxying
# the same POST to the same nginx backend over HTTP/1.1 keep-alive, 5,000 requests on 8
# connections (h2load --h1) after 200 unrecorded ones. Says whether a proxy writes each response
# once (one TLS record, one flush) or in pieces.
#
#   benches/profile/syscalls.sh               # plain HTTP; builds scoregate in release
#   PROTO=https benches/profile/syscalls.sh   # over TLS 1.3 (both proxies terminate TLS)
#   SCOREGATE_BIN=path benches/profile/syscalls.sh
#
# Needs strace, h2load (nghttp2-client) and nginx; installs them with apt-get when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REQUESTS=5000
KEY=bench-key-0123456789abcdef
PROTO=${PROTO:-http}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

missing=()
for tool in strace:strace h2load:nghttp2-client nginx:nginx-light; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ -z "${SCOREGATE_BIN:-}" ]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/bench-release" \
    cargo build --release --quiet -p scoregate --bin scoregate)
  SCOREGATE_BIN=$ROOT/target/bench-release/release/scoregate
fi

echo '{"data": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]}' > "$WORK/body.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
if [ "$PROTO" = https ]; then
  PROXY_LISTEN="ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off"
  SG_LISTEN=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --tls-listen 127.0.0.1:28382
    --listen 127.0.0.1:28384 --tls-session-resumption false)
else
  PROXY_LISTEN=""
  SG_LISTEN=(--listen 127.0.0.1:28382)
fi
nginx_conf() { # name listen body [listen options]
  cat > "$WORK/$1.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
error_log $WORK/$1-error.log;
pid $WORK/$1.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $WORK/$1-body;
  upstream backend { server 127.0.0.1:28380; keepalive 128; keepalive_requests 100000000; keepalive_timeout 75s; }
  server {
    listen 127.0.0.1:$2 ${4:-};
    $3
  }
}
EOF
}
nginx_conf backend 28380 "location = /score { default_type application/json; return 200 '{\"predictions\": [0.1234, 0.5678], \"model\": \"bench\", \"version\": \"1.0.0\", \"latency_ms\": 0.1}'; }"
nginx_conf proxy 28381 'location = /api/v1/endpoint/bench/score { proxy_pass http://backend/score; proxy_http_version 1.1; proxy_set_header Connection ""; }' "$PROXY_LISTEN"
cat > "$WORK/routes.yaml" <<EOF
endpoints:
  - name: bench
    keys: { primary: "$KEY" }
    traffic: { blue: 100 }
deployments:
  - name: blue
    endpoint: bench
    pods: ["127.0.0.1:28380"]
    request_settings: { max_concurrent_requests_per_instance: 1000, max_queue_length: 1000 }
EOF
nginx -c "$WORK/backend.conf" -e "$WORK/backend-error.log" &
PIDS+=($!)

# count LABEL URL COMMAND...: starts COMMAND, loads URL under strace, prints calls per request.
count() {
  local label=$1 url=$2
  shift 2
  "$@" > "$WORK/$label.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 60); do
    curl -sk -o /dev/null -X POST "$url" && break
    sleep 0.5
  done
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

count nginx "$PROTO://127.0.0.1:28381/api/v1/endpoint/bench/score" nginx -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log"
count scoregate "$PROTO://127.0.0.1:28382/api/v1/endpoint/bench/score" "$SCOREGATE_BIN" serve \
  --routes "$WORK/routes.yaml" "${SG_LISTEN[@]}" --admin-listen 127.0.0.1:28383 \
  --allow-insecure-connections --workers 1 --access-log off
