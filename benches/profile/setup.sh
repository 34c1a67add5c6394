# shellcheck shell=bash disable=SC2034
# Shared by callgrind.sh and syscalls.sh (sourced, not run): installs the tools each needs,
# builds scoregate unless SCOREGATE_BIN names one, and writes into $WORK a certificate, an nginx
# backend on port $BASE that answers POST /score, an nginx proxy on $BASE+1 and a scoregate
# routes file for the same backend. With PROTO=https both proxies terminate TLS 1.3.
#
# Needs: ROOT, WORK, BASE and TOOLS ("command:debian-package ..."); sets REQUESTS, KEY and PROTO
# (http unless set) for the caller.

REQUESTS=5000
KEY=bench-key-0123456789abcdef
PROTO=${PROTO:-http}

missing=()
for tool in $TOOLS h2load:nghttp2-client nginx:nginx-light; do
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
NGINX_URL="$PROTO://127.0.0.1:$((BASE + 1))/api/v1/endpoint/bench/score"
SCOREGATE_URL="$PROTO://127.0.0.1:$((BASE + 2))/api/v1/endpoint/bench/score"
if [ "$PROTO" = https ]; then
  PROXY_LISTEN="ssl; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off"
  SG_LISTEN=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --tls-listen "127.0.0.1:$((BASE + 2))"
    --listen "127.0.0.1:$((BASE + 4))" --tls-session-resumption false)
else
  PROXY_LISTEN=""
  SG_LISTEN=(--listen "127.0.0.1:$((BASE + 2))")
fi
# The scoregate command line (one worker, key auth, admission and metrics on, no access log).
SCOREGATE_CMD=("$SCOREGATE_BIN" serve --routes "$WORK/routes.yaml" "${SG_LISTEN[@]}"
  --admin-listen "127.0.0.1:$((BASE + 3))" --allow-insecure-connections --workers 1 --access-log off)
NGINX_CMD=(nginx -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log")

nginx_conf() { # name listen body [listen options]
  cat > "$WORK/$1.conf" <<CONF
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
  upstream backend { server 127.0.0.1:$BASE; keepalive 128; keepalive_requests 100000000; keepalive_timeout 75s; }
  server {
    listen 127.0.0.1:$2 ${4:-};
    $3
  }
}
CONF
}
nginx_conf backend "$BASE" "location = /score { default_type application/json; return 200 '{\"predictions\": [0.1234, 0.5678], \"model\": \"bench\", \"version\": \"1.0.0\", \"latency_ms\": 0.1}'; }"
nginx_conf proxy "$((BASE + 1))" 'location = /api/v1/endpoint/bench/score { proxy_pass http://backend/score; proxy_http_version 1.1; proxy_set_header Connection ""; }' "$PROXY_LISTEN"
cat > "$WORK/routes.yaml" <<ROUTES
endpoints:
  - name: bench
    keys: { primary: "$KEY" }
    traffic: { blue: 100 }
deployments:
  - name: blue
    endpoint: bench
    pods: ["127.0.0.1:$BASE"]
    request_settings: { max_concurrent_requests_per_instance: 1000, max_queue_length: 1000 }
ROUTES

# wait_ready URL: waits (up to 2 minutes: callgrind starts slowly) until a proxy answers at URL.
wait_ready() {
  for _ in $(seq 1 120); do
    curl -sk -o /dev/null -X POST "$1" && return
    sleep 1
  done
}
