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
REQUESTS=5000
KEY=bench-key-0123456789abcdef
PROTO=${PROTO:-http}
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null || true; sleep 1; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT

missing=()
for tool in valgrind:valgrind h2load:nghttp2-client nginx:nginx-light; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ -z "${SCOREGATE_BIN:-}" ]; then
  (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/bench-release" \
    cargo build --profile profiling --quiet -p scoregate --bin scoregate)
  SCOREGATE_BIN=$ROOT/target/bench-release/profiling/scoregate
fi

echo '{"data": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]}' > "$WORK/body.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
if [ "$PROTO" = https ]; then
  PROXY_LISTEN="ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off"
  SG_LISTEN=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --tls-listen 127.0.0.1:18282
    --listen 127.0.0.1:18284 --tls-session-resumption false)
else
  PROXY_LISTEN=""
  SG_LISTEN=(--listen 127.0.0.1:18282)
fi
nginx_conf() { # name listen body
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
  upstream backend { server 127.0.0.1:18280; keepalive 128; keepalive_requests 100000000; keepalive_timeout 75s; }
  server {
    listen 127.0.0.1:$2 ${4:-};
    $3
  }
}
EOF
}
nginx_conf backend 18280 "location = /score { default_type application/json; return 200 '{\"predictions\": [0.1234, 0.5678], \"model\": \"bench\", \"version\": \"1.0.0\", \"latency_ms\": 0.1}'; }"
nginx_conf proxy 18281 'location = /api/v1/endpoint/bench/score { proxy_pass http://backend/score; proxy_http_version 1.1; proxy_set_header Connection ""; }' "$PROXY_LISTEN"
cat > "$WORK/routes.yaml" <<EOF
endpoints:
  - name: bench
    keys: { primary: "$KEY" }
    traffic: { blue: 100 }
deployments:
  - name: blue
    endpoint: bench
    pods: ["127.0.0.1:18280"]
    request_settings: { max_concurrent_requests_per_instance: 1000, max_queue_length: 1000 }
EOF
nginx -c "$WORK/backend.conf" -e "$WORK/backend-error.log" &

# profile LABEL URL COMMAND...: runs COMMAND under callgrind, loads URL, prints the total.
profile() {
  local label=$1 url=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$label.%p" "$@" > "$WORK/$label.log" 2>&1 &
  for _ in $(seq 1 120); do
    curl -sk -o /dev/null -X POST "$url" && break
    sleep 1
  done
  local load=(h2load --h1 -c 8 -d "$WORK/body.json" -H "Authorization: Bearer $KEY" "$url")
  "${load[@]}" -n 200 > /dev/null
  local pid
  pid=$(pgrep -f "callgrind-out-file=$WORK/cg.$label" | head -1)
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
  local out
  out=$(ls -S "$WORK"/cg."$label".* | head -1)
  local total
  total=$(callgrind_annotate --auto=no "$out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "$label: $((total / REQUESTS)) instructions per request"
  PROFILE_OUT=$out
}

profile nginx "$PROTO://127.0.0.1:18281/api/v1/endpoint/bench/score" nginx -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log"
profile scoregate "$PROTO://127.0.0.1:18282/api/v1/endpoint/bench/score" "$SCOREGATE_BIN" serve \
  --routes "$WORK/routes.yaml" "${SG_LISTEN[@]}" --admin-listen 127.0.0.1:18283 \
  --allow-insecure-connections --workers 1 --access-log off
echo
python3 "$ROOT/benches/profile/by_crate.py" "$PROFILE_OUT" "$REQUESTS"
