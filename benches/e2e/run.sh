#!/usr/bin/env bash
# scoregate side-by-side benchmark (issue 6): scoregate vs nginx vs HAProxy vs the backend direct,
# on one core each, with the method benches/README.md describes ("split" layout).
#
#   benches/e2e/run.sh            # full run (about 10 minutes of load after the build)
#   benches/e2e/run.sh --quick    # smoke test: 1 round, 3 s runs
#
# See benches/README.md for what each mode measures. Runs as root on Debian (it installs
# nginx-light, haproxy, wrk and jq with apt-get if missing, and oha with cargo), only on 127.0.0.1.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/e2e/run.sh [--quick] [--modes "http https handshake latency memory"] [--out FILE]

  --quick        1 round, 3 s runs, 1 s warm-up: a smoke test, not a measurement
  --modes LIST   a subset of: http https handshake latency memory (default: all)
  --out FILE     where to write the report (default benches/RESULTS.md, or
                 benches/RESULTS-quick.md with --quick)

environment:
  SCOREGATE_BIN=path   use this scoregate binary instead of building one in release
  ROUNDS, DURATION, HS_DURATION, LAT_DURATION, WARMUP, LAT_RATE   override the settings
  KEEP_WORK=1          keep the scratch directory (configs, logs, raw runs) afterwards
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COMMAND_LINE="benches/e2e/run.sh${*:+ $*}"
QUICK=0
ALL_MODES="http https handshake latency memory"
MODES=$ALL_MODES
OUT=""
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --modes)
            MODES=${2:?--modes needs a list}
            shift
            ;;
        --out)
            OUT=${2:?--out needs a file}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done
for m in $MODES; do
    [[ " $ALL_MODES " == *" $m "* ]] || {
        echo "run.sh: unknown mode '$m' (use: $ALL_MODES)" >&2
        exit 2
    }
done

# ---------------------------------------------------------------- settings (the baseline's)
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3} HS_DURATION=${HS_DURATION:-3}
    LAT_DURATION=${LAT_DURATION:-3} WARMUP=${WARMUP:-1}
    OUT=${OUT:-$ROOT/benches/RESULTS-quick.md}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} HS_DURATION=${HS_DURATION:-5}
    LAT_DURATION=${LAT_DURATION:-10} WARMUP=${WARMUP:-2}
    OUT=${OUT:-$ROOT/benches/RESULTS.md}
fi
LAT_RATE=${LAT_RATE:-2000}
CONNS=64          # wrk -c for the keep-alive modes
HS_CONNS=32       # oha -c for the new-connection mode
LAT_CONNS=32      # oha -c for the fixed-rate mode
HOLD_CONNS=10000  # idle client connections for the memory mode
SERVER_CPU=0      # backend and the proxy under test
LOADGEN_CPU=1     # wrk / oha
OHA_VERSION=1.16.0

# Ports as in the baseline; scoregate takes the two left for the router, and one more for admin.
P_BACKEND=18080 P_BACKEND_TLS=18090
P_NGINX=18081 P_NGINX_TLS=18091
P_HAPROXY=18082 P_HAPROXY_TLS=18092
P_SCOREGATE=18083 P_SCOREGATE_TLS=18093 P_SCOREGATE_ADMIN=18094

ENDPOINT=bench-ep
KEY=bench-primary-key-0123456789abcdef
SCORE_PATH=/api/v1/endpoint/$ENDPOINT/score
BODY='{"data":[[0.12,0.34,0.56,0.78,0.91,0.23,0.4]]}'
RESPONSE='{"id":"bench-0001","model":"bench","version":"1","result":[0.125,0.25,0.5,0.75],"label":"passed","ok":true}'
((${#BODY} == 46)) || {
    echo "run.sh: request body is ${#BODY} bytes, not 46" >&2
    exit 1
}
((${#RESPONSE} == 107)) || {
    echo "run.sh: response body is ${#RESPONSE} bytes, not 107" >&2
    exit 1
}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and runs servers pinned to CPUs)"
(($(nproc) >= 2)) || die "needs 2 CPUs (load generator on CPU $LOADGEN_CPU, servers on CPU $SERVER_CPU)"

# ---------------------------------------------------------------- tools
install_tools() {
    local missing=() p
    for p in nginx-light haproxy wrk jq curl openssl procps util-linux; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        # Debian starts nginx and haproxy as services on install; keep it from doing so.
        local policy=/usr/sbin/policy-rc.d made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod +x "$policy"
            made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        if ((made_policy)); then rm -f "$policy"; fi
    fi
    PATH=$PATH:$HOME/.cargo/bin
    if ! command -v oha >/dev/null; then
        log "installing oha $OHA_VERSION with cargo: this takes about 4-5 minutes (once)"
        cargo install oha --locked --version "$OHA_VERSION"
    fi
}

build_scoregate() {
    if [[ -n ${SCOREGATE_BIN:-} ]]; then
        [[ -x $SCOREGATE_BIN ]] || die "SCOREGATE_BIN=$SCOREGATE_BIN is not an executable"
        SG_BUILD="binary $SCOREGATE_BIN"
        return
    fi
    log "building scoregate in release (target/bench-release)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/bench-release" \
        cargo build --release --quiet -p scoregate --bin scoregate)
    SCOREGATE_BIN=$ROOT/target/bench-release/release/scoregate
    SG_BUILD="release build"
}

install_tools
build_scoregate

WORK=$(mktemp -d /tmp/scoregate-bench.XXXXXX)
RUNS=$WORK/runs.tsv
declare -A PID_OF=()
cleanup() {
    local name
    for name in "${!PID_OF[@]}"; do
        kill "${PID_OF[$name]}" 2>/dev/null || true
    done
    for name in "${!PID_OF[@]}"; do
        wait "${PID_OF[$name]}" 2>/dev/null || true
    done
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        log "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10,000 idle client connections need file descriptors, in scoregate (started from here) and in
# the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "building the connection holder (rustc, std only)"
rustc --edition 2021 -O -o "$WORK/holdconns" "$ROOT/benches/e2e/holdconns.rs"

# ---------------------------------------------------------------- certificate and configs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

mkdir -p "$WORK/nginx-backend" "$WORK/nginx-proxy"
cat >"$WORK/nginx-backend.conf" <<EOF
worker_processes 1;
pid $WORK/nginx-backend.pid;
error_log $WORK/nginx-backend/error.log error;
events { worker_connections 16384; }
worker_rlimit_nofile 40000;
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/json;
    server {
        listen 127.0.0.1:$P_BACKEND;
        listen 127.0.0.1:$P_BACKEND_TLS ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location = /score { return 200 '$RESPONSE'; }
        location = / { default_type text/plain; return 200 'ok'; }
        location = /__stub { stub_status; }
    }
}
EOF

cat >"$WORK/nginx-proxy.conf" <<EOF
worker_processes 1;
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        listen 127.0.0.1:$P_NGINX_TLS ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location = $SCORE_PATH {
            proxy_pass http://backend/score;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    tune.ssl.cachesize 0
defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn 4096
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
frontend bench
    bind 127.0.0.1:$P_HAPROXY
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $WORK/haproxy.pem ssl-min-ver TLSv1.2 no-tls-tickets
    http-request set-path /score if { path $SCORE_PATH }
    default_backend model
backend model
    server backend 127.0.0.1:$P_BACKEND
EOF

# scoregate: one endpoint, key auth, 100 % of traffic to one deployment whose one pod is the
# backend; admission on, with a per-pod cap far above the 64 client connections.
SG_CAP=4096
cat >"$WORK/routes.yaml" <<EOF
endpoints:
  - name: $ENDPOINT
    auth_mode: key
    keys: { primary: "$KEY", secondary: "bench-secondary-key-0123456789abcdef" }
    traffic: { blue: 100 }
deployments:
  - name: blue
    endpoint: $ENDPOINT
    pods: ["127.0.0.1:$P_BACKEND"]
    request_settings:
      request_timeout_ms: 5000
      max_concurrent_requests_per_instance: $SG_CAP
      max_queue_wait_ms: 500
EOF
# Upstream keep-alive as long as nginx's (75 s) so that pooled connections survive the other
# targets' runs, and a quick exit at the end.
cat >"$WORK/scoregate.yaml" <<EOF
upstream:
  idle_timeout_ms: 75000
shutdown:
  drain_delay_ms: 0
  grace_period_ms: 1000
EOF

cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$SCORE_PATH" "$P_SCOREGATE" "$KEY" "${#BODY}" "$BODY" >"$WORK/request.http"

# ---------------------------------------------------------------- processes
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

# start NAME COMMAND...: runs it on the server CPU, in the foreground of its own process.
start() {
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$WORK/$name.log" 2>&1 &
    PID_OF[$name]=$!
}

for p in $P_BACKEND $P_BACKEND_TLS $P_NGINX $P_NGINX_TLS $P_HAPROXY $P_HAPROXY_TLS \
    $P_SCOREGATE $P_SCOREGATE_TLS $P_SCOREGATE_ADMIN; do
    ! port_open "$p" || die "port $p on 127.0.0.1 is in use: stop what listens there"
done

log "starting backend, nginx, haproxy and scoregate on CPU $SERVER_CPU"
start backend nginx -c "$WORK/nginx-backend.conf" -g 'daemon off;'
start nginx nginx -c "$WORK/nginx-proxy.conf" -g 'daemon off;'
start haproxy haproxy -db -f "$WORK/haproxy.cfg"

SG_TLS_ARGS=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --tls-listen "127.0.0.1:$P_SCOREGATE_TLS"
    --tls-session-resumption false)
start_scoregate() {
    start scoregate "$SCOREGATE_BIN" serve --config "$WORK/scoregate.yaml" --routes "$WORK/routes.yaml" \
        --workers 1 --access-log off --allow-insecure-connections \
        --listen "127.0.0.1:$P_SCOREGATE" --admin-listen "127.0.0.1:$P_SCOREGATE_ADMIN" "$@"
}
start_scoregate "${SG_TLS_ARGS[@]}"
SG_TLS_NOTE=""
if ! wait_port "$P_SCOREGATE"; then
    # A build without working TLS termination may refuse the TLS flags: serve plain HTTP only.
    kill "${PID_OF[scoregate]}" 2>/dev/null || true
    wait "${PID_OF[scoregate]}" 2>/dev/null || true
    SG_TLS_NOTE="scoregate did not start with --tls-cert/--tls-key/--tls-listen ($(tail -n 1 "$WORK/scoregate.log")); started without TLS"
    log "$SG_TLS_NOTE"
    start_scoregate
    wait_port "$P_SCOREGATE" || die "scoregate did not start: $(cat "$WORK/scoregate.log")"
fi
for p in $P_BACKEND $P_BACKEND_TLS $P_NGINX $P_NGINX_TLS $P_HAPROXY $P_HAPROXY_TLS; do
    wait_port "$p" || die "nothing listens on $p: see $WORK/*.log (KEEP_WORK=1 keeps them)"
done
sleep 1
SG_PID=${PID_OF[scoregate]}
pids_of_tree() {
    local p
    for p in "$@"; do
        echo "$p"
        pgrep -P "$p" || true
    done
}
status_kib() { # FIELD PID...: the field summed over the processes and their children
    local field=$1 total=0 pid v
    shift
    for pid in $(pids_of_tree "$@"); do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
SG_RSS_IDLE_FRESH=$(status_kib VmRSS "$SG_PID")

# ---------------------------------------------------------------- sanity checks
check_target() { # NAME URL: one request like the load generators send; prints the status code
    curl -sk -o "$WORK/check.body" -D "$WORK/check.head" -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary "$BODY" "$2" || true
}
tls_resumption() { # PORT: "on" when a second connection resumes the first one's session
    local sess=$WORK/session-$1
    rm -f "$sess"
    sleep 0.3 | openssl s_client -connect "127.0.0.1:$1" -servername 127.0.0.1 -sess_out "$sess" >/dev/null 2>&1 || true
    [[ -s $sess ]] || {
        echo off
        return
    }
    if openssl s_client -connect "127.0.0.1:$1" -servername 127.0.0.1 -sess_in "$sess" </dev/null 2>/dev/null |
        grep -q '^Reused'; then
        echo on
    else
        echo off
    fi
}
tls_protocol() {
    openssl s_client -connect "127.0.0.1:$1" -servername 127.0.0.1 </dev/null 2>/dev/null |
        awk '/^(New|Reused),/ { sub(",", "", $2); print $2; exit }'
}

declare -A URL=(
    [direct]=http://127.0.0.1:$P_BACKEND/score
    [nginx]=http://127.0.0.1:$P_NGINX$SCORE_PATH
    [haproxy]=http://127.0.0.1:$P_HAPROXY$SCORE_PATH
    [scoregate]=http://127.0.0.1:$P_SCOREGATE$SCORE_PATH
    [direct-tls]=https://127.0.0.1:$P_BACKEND_TLS/score
    [nginx-tls]=https://127.0.0.1:$P_NGINX_TLS$SCORE_PATH
    [haproxy-tls]=https://127.0.0.1:$P_HAPROXY_TLS$SCORE_PATH
    [scoregate-tls]=https://127.0.0.1:$P_SCOREGATE_TLS$SCORE_PATH
)
declare -A PORT_OF=([direct-tls]=$P_BACKEND_TLS [nginx-tls]=$P_NGINX_TLS [haproxy-tls]=$P_HAPROXY_TLS [scoregate-tls]=$P_SCOREGATE_TLS)
declare -A SKIP=() TLS_INFO=()
for t in direct nginx haproxy scoregate direct-tls nginx-tls haproxy-tls scoregate-tls; do
    code=$(check_target "$t" "${URL[$t]}")
    if [[ $code != 200 ]] || ! cmp -s "$WORK/check.body" <(printf '%s' "$RESPONSE"); then
        SKIP[$t]="sanity request got HTTP ${code:-nothing}, not 200 with the 107-byte body"
        [[ $t == scoregate-tls && -n $SG_TLS_NOTE ]] && SKIP[$t]=$SG_TLS_NOTE
        log "skipping $t: ${SKIP[$t]}"
        continue
    fi
    if [[ $t == scoregate ]] && ! grep -qi '^azureml-model-deployment: blue' "$WORK/check.head"; then
        die "scoregate answered without azureml-model-deployment: blue (not routed through the endpoint?)"
    fi
    if [[ $t == *-tls ]]; then
        TLS_INFO[$t]="$(tls_protocol "${PORT_OF[$t]}"), resumption $(tls_resumption "${PORT_OF[$t]}")"
        log "$t: ${TLS_INFO[$t]}"
    fi
done
[[ -z ${SKIP[scoregate]:-} ]] || die "scoregate does not serve the benchmark request: ${SKIP[scoregate]}"
# A wrong key must be refused, or the auth step is not on the measured path.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer wrong-key' \
    --data-binary "$BODY" "${URL[scoregate]}" || true)
[[ $code == 401 ]] || die "scoregate answered $code to a wrong key, not 401: is key auth on?"

# ---------------------------------------------------------------- measurement
CLK_TCK=$(getconf CLK_TCK)
# /proc/PID/stat's utime and stime (fields 14 and 15) count every thread of the process, the
# exited ones too (a thread's /proc/PID/task/TID/stat is gone once it exits).
proc_ticks_split() { # PID...: "utime stime" of the processes (all threads) and their children
    local user=0 system=0 pid stat fields
    for pid in $(pids_of_tree "$@"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -ra fields <<<"${stat##*) }"
        user=$((user + fields[11])) system=$((system + fields[12]))
    done
    echo "$user $system"
}
proc_ticks() { # PID...: utime+stime of the processes (all threads) and their children
    local user system
    read -r user system <<<"$(proc_ticks_split "$@")"
    echo $((user + system))
}
reset_hwm() {
    local pid
    for pid in $(pids_of_tree "$@"); do
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    done
}
cpu_busy_total() { # CPU: "busy total" jiffies from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
backend_accepts() {
    curl -s "http://127.0.0.1:$P_BACKEND/__stub" | awk 'NR == 3 { print $1 }'
}
proxy_pids() { # TARGET: the proxy's root process, or nothing for the direct targets
    case $1 in
        nginx*) echo "${PID_OF[nginx]}" ;;
        haproxy*) echo "${PID_OF[haproxy]}" ;;
        scoregate*) echo "$SG_PID" ;;
    esac
}

# load MODE URL SECONDS OUTFILE: one run of the mode's load generator on the load-generator CPU.
load() {
    local mode=$1 url=$2 secs=$3 out=$4
    local oha_common=(--no-tui --output-format json --worker-threads 1 -z "${secs}s" --insecure
        -m POST -H "Authorization: Bearer $KEY" -T application/json -d "$BODY")
    case $mode in
        http | https)
            taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s -s "$WORK/post.lua" "$url" >"$out" 2>&1
            ;;
        handshake)
            taskset -c "$LOADGEN_CPU" oha "${oha_common[@]}" --disable-keepalive -c "$HS_CONNS" "$url" >"$out" 2>"$out.err"
            ;;
        latency)
            taskset -c "$LOADGEN_CPU" oha "${oha_common[@]}" -q "$LAT_RATE" --latency-correction -c "$LAT_CONNS" "$url" >"$out" 2>"$out.err"
            ;;
    esac
}

# parse MODE OUTFILE: "requests seconds p50_ms p99_ms p999_ms errors"
parse() {
    local mode=$1 out=$2
    case $mode in
        http | https)
            awk '/^RESULT/ {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                printf "%d %.3f %.3f %.3f %.3f %d\n", v["requests"], v["duration_us"] / 1e6,
                    v["p50_us"] / 1000, v["p99_us"] / 1000, v["p999_us"] / 1000, v["errors"] }' "$out"
            ;;
        *)
            # Requests cut off by the end of the run are not errors; every other error is.
            jq -r '[ ([.statusCodeDistribution[]] | add // 0),
                     .summary.total,
                     (.latencyPercentiles.p50 // 0) * 1000,
                     (.latencyPercentiles.p99 // 0) * 1000,
                     (.latencyPercentiles["p99.9"] // 0) * 1000,
                     (([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
                      + ([.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0))
                   ] | map(tostring) | join(" ")' "$out" |
                awk '{ printf "%d %.3f %.3f %.3f %.3f %d\n", $1, $2, $3, $4, $5, $6 }'
            ;;
    esac
}

printf 'mode\ttarget\tround\trate\tp50_ms\tp99_ms\tp999_ms\tproxy_us\tbackend_us\tserver_busy\tloadgen_busy\thwm_kib\tnew_backend_conns\terrors\trequests\tproxy_user_us\tproxy_sys_us\n' >"$RUNS"

# measure MODE TARGET ROUND: warm-up run, then one recorded run; appends a line to $RUNS.
measure() {
    local mode=$1 target=$2 round=$3 url=${URL[$2]} secs out
    case $mode in
        handshake) secs=$HS_DURATION ;;
        latency) secs=$LAT_DURATION ;;
        *) secs=$DURATION ;;
    esac
    out=$WORK/run-$mode-$target-$round.out
    local -a proxy
    read -ra proxy <<<"$(proxy_pids "$target")"
    load "$mode" "$url" "$WARMUP" "$out.warmup" || true

    local pu0=0 ps0=0 b0 s0 g0 a0 pu1=0 ps1=0 b1 s1 g1 a1
    if ((${#proxy[@]})); then
        reset_hwm "${proxy[@]}"
        read -r pu0 ps0 <<<"$(proc_ticks_split "${proxy[@]}")"
    fi
    b0=$(proc_ticks "${PID_OF[backend]}")
    read -ra s0 <<<"$(cpu_busy_total "$SERVER_CPU")"
    read -ra g0 <<<"$(cpu_busy_total "$LOADGEN_CPU")"
    a0=$(backend_accepts)
    load "$mode" "$url" "$secs" "$out" || log "$mode $target round $round: the load generator failed (see $out)"
    read -ra s1 <<<"$(cpu_busy_total "$SERVER_CPU")"
    read -ra g1 <<<"$(cpu_busy_total "$LOADGEN_CPU")"
    if ((${#proxy[@]})); then read -r pu1 ps1 <<<"$(proc_ticks_split "${proxy[@]}")"; fi
    b1=$(proc_ticks "${PID_OF[backend]}")
    a1=$(backend_accepts)
    local hwm=- requests seconds p50 p99 p999 errors
    if ((${#proxy[@]})); then hwm=$(status_kib VmHWM "${proxy[@]}"); fi
    read -r requests seconds p50 p99 p999 errors <<<"$(parse "$mode" "$out")" || true
    if [[ -z ${requests:-} || ${requests:-0} == 0 ]]; then
        log "$mode $target round $round: no requests completed (see $out)"
        requests=0 seconds=1 p50=0 p99=0 p999=0 errors=${errors:-0}
    fi
    # The backend's stub_status probe itself is one new connection: take it off.
    awk -v OFS='\t' -v m="$mode" -v t="$target" -v r="$round" -v n="$requests" -v s="$seconds" \
        -v p50="$p50" -v p99="$p99" -v p999="$p999" -v np="${#proxy[@]}" -v pu=$((pu1 - pu0)) -v ps=$((ps1 - ps0)) \
        -v bt=$((b1 - b0)) -v hz="$CLK_TCK" -v sb=$((s1[0] - s0[0])) -v st=$((s1[1] - s0[1])) \
        -v gb=$((g1[0] - g0[0])) -v gt=$((g1[1] - g0[1])) -v hwm="$hwm" -v nc=$((a1 - a0 - 1)) \
        -v e="$errors" 'BEGIN {
            us = 1e6 / hz / (n > 0 ? n : 1)
            print m, t, r, n / s, p50, p99, p999, (np ? sprintf("%.1f", (pu + ps) * us) : "-"),
                sprintf("%.1f", bt * us), sprintf("%.0f", 100 * sb / (st > 0 ? st : 1)),
                sprintf("%.0f", 100 * gb / (gt > 0 ? gt : 1)), hwm, nc, e, n,
                (np ? sprintf("%.1f", pu * us) : "-"), (np ? sprintf("%.1f", ps * us) : "-") }' >>"$RUNS"
    log "$(tail -n 1 "$RUNS" | awk -F'\t' '{ printf "%-9s %-13s round %s: %9.0f/s  p50 %.2f ms  p99 %.2f ms  proxy %s us/req  errors %s", $1, $2, $3, $4, $5, $6, $8, $14 }')"
}

targets_of() {
    case $1 in
        http | latency) echo "direct nginx haproxy scoregate" ;;
        https | handshake) echo "direct-tls nginx-tls haproxy-tls scoregate-tls" ;;
    esac
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u '+%Y-%m-%d %H:%M:%SZ')
for mode in http https handshake latency; do
    [[ " $MODES " == *" $mode "* ]] || continue
    log "mode $mode: $ROUNDS round(s), interleaved"
    for ((round = 1; round <= ROUNDS; round++)); do
        for target in $(targets_of "$mode"); do
            [[ -z ${SKIP[$target]:-} ]] || continue
            measure "$mode" "$target" "$round"
        done
    done
done

# ---------------------------------------------------------------- memory
SG_METRICS=$(curl -s "http://127.0.0.1:$P_SCOREGATE_ADMIN/metrics" || true)
# VmHWM is reset before every run: the peak over the load modes is the largest per-run peak.
SG_HWM_TOTAL=$(awk -F'\t' -v m="$(status_kib VmHWM "$SG_PID")" 'NR > 1 && $2 ~ /^scoregate/ && $12 + 0 > m { m = $12 + 0 } END { print m }' "$RUNS")
SG_RSS_IDLE_AFTER=$(status_kib VmRSS "$SG_PID")
declare -A MEM=()
if [[ " $MODES " == *" memory "* ]]; then
    # Each reading on a freshly started scoregate: freed memory is not returned to the system,
    # so a reading after other work would count that work too.
    restart_scoregate() {
        kill "$SG_PID" 2>/dev/null || true
        wait "$SG_PID" 2>/dev/null || true
        if [[ -n $SG_TLS_NOTE ]]; then start_scoregate; else start_scoregate "${SG_TLS_ARGS[@]}"; fi
        wait_port "$P_SCOREGATE" || die "scoregate did not restart: $(tail -n 3 "$WORK/scoregate.log")"
        SG_PID=${PID_OF[scoregate]}
        sleep 1
    }
    for hold in keep-alive open; do
        restart_scoregate
        log "memory: $HOLD_CONNS idle connections to a fresh scoregate ($hold)"
        if taskset -c "$LOADGEN_CPU" "$WORK/holdconns" "127.0.0.1:$P_SCOREGATE" "$HOLD_CONNS" "$SG_PID" \
            "$WORK/request.http" "$hold" >"$WORK/holdconns-$hold.out" 2>"$WORK/holdconns-$hold.err"; then
            MEM[$hold]=$(cat "$WORK/holdconns-$hold.out")
        else
            MEM[$hold]="failed: $(tail -n 2 "$WORK/holdconns-$hold.err")"
        fi
        log "memory: $(tr '\n' ';' <<<"${MEM[$hold]}")"
    done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
col() { awk -F'\t' -v m="$1" -v t="$2" -v c="$3" 'NR > 1 && $1 == m && $2 == t && $c != "-" { print $c }' "$RUNS"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maximum() { sort -g | awk 'END { print (NR ? $1 : "nan") }'; }
spread() { sort -g | awk '{ v[NR] = $1 } END { if (NR < 2) { print "–"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.0f%%", (m > 0 ? 100 * (v[NR] - v[1]) / m : 0) }'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "nan" || v == "") print "–"; else printf f, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || a == "" || b == "" || b == 0) print "–"; else printf "%.2f", a / b }'; }
sum() { awk '{ s += $1 } END { print s + 0 }'; }

throughput_table() { # MODE UNIT
    local mode=$1 unit=$2 t rate nginx_rate haproxy_rate cpu nginx_cpu haproxy_cpu n g h
    echo "| target | $unit | spread | vs nginx | vs haproxy | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/$3 | proxy user µs/$3 | proxy sys µs/$3 | CPU vs nginx | CPU vs haproxy | peak RSS MiB | backend CPU µs/$3 | new backend conns/run | server CPU busy | loadgen CPU busy | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in $(targets_of "$mode"); do
        if [[ -n ${SKIP[$t]:-} ]]; then
            echo "| $t | skipped: ${SKIP[$t]} |||||||||||||||||"
            continue
        fi
        case $t in *-tls) g=nginx-tls h=haproxy-tls ;; *) g=nginx h=haproxy ;; esac
        rate=$(col "$mode" "$t" 4 | median)
        nginx_rate=$(col "$mode" "$g" 4 | median)
        haproxy_rate=$(col "$mode" "$h" 4 | median)
        cpu=$(col "$mode" "$t" 8 | median)
        nginx_cpu=$(col "$mode" "$g" 8 | median)
        haproxy_cpu=$(col "$mode" "$h" 8 | median)
        n=$(col "$mode" "$t" 14 | sum)
        echo "| $t | $(fmt "$rate" %.0f) | $(col "$mode" "$t" 4 | spread) | $(ratio "$rate" "$nginx_rate") | $(ratio "$rate" "$haproxy_rate") | $(fmt "$(col "$mode" "$t" 5 | median)" %.2f) | $(fmt "$(col "$mode" "$t" 6 | median)" %.2f) | $(fmt "$(col "$mode" "$t" 7 | median)" %.2f) | $(fmt "$cpu" %.1f) | $(fmt "$(col "$mode" "$t" 16 | median)" %.1f) | $(fmt "$(col "$mode" "$t" 17 | median)" %.1f) | $(ratio "$cpu" "$nginx_cpu") | $(ratio "$cpu" "$haproxy_cpu") | $(fmt "$(col "$mode" "$t" 12 | maximum)" "%.1f" | awk '{ print ($1 == "–") ? $1 : sprintf("%.1f", $1 / 1024) }') | $(fmt "$(col "$mode" "$t" 9 | median)" %.1f) | $(fmt "$(col "$mode" "$t" 13 | median)" %.0f) | $(fmt "$(col "$mode" "$t" 10 | median)" %.0f)% | $(fmt "$(col "$mode" "$t" 11 | median)" %.0f)% | $n |"
    done
}

latency_table() {
    local t d50 d99 d999 v50 v99 v999
    d50=$(col latency direct 5 | median)
    d99=$(col latency direct 6 | median)
    d999=$(col latency direct 7 | median)
    echo "| target | achieved req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | proxy CPU µs/req | peak RSS MiB | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in $(targets_of latency); do
        [[ -z ${SKIP[$t]:-} ]] || {
            echo "| $t | skipped: ${SKIP[$t]} |||||||||"
            continue
        }
        v50=$(col latency "$t" 5 | median)
        v99=$(col latency "$t" 6 | median)
        v999=$(col latency "$t" 7 | median)
        echo "| $t | $(fmt "$(col latency "$t" 4 | median)" %.0f) | $(fmt "$v50" %.3f) | $(fmt "$v99" %.3f) | $(fmt "$v999" %.3f) | $(awk -v a="$v50" -v b="$d50" 'BEGIN { printf "%+.3f", a - b }') | $(awk -v a="$v99" -v b="$d99" 'BEGIN { printf "%+.3f", a - b }') | $(awk -v a="$v999" -v b="$d999" 'BEGIN { printf "%+.3f", a - b }') | $(fmt "$(col latency "$t" 8 | median)" %.1f) | $(fmt "$(col latency "$t" 12 | maximum)" %.1f | awk '{ print ($1 == "–") ? $1 : sprintf("%.1f", $1 / 1024) }') | $(col latency "$t" 14 | sum) |"
    done
}

mem_field() { # MODE STAGE KEY
    awk -v s="$2" -v k="$3" '$1 == s { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' <<<"${MEM[$1]:-}"
}
kib_to_mib() { awk -v k="$1" 'BEGIN { if (k == "") print "–"; else printf "%.1f", k / 1024 }'; }

memory_section() {
    local hold before held
    echo "| scoregate state | RSS MiB | per connection KiB |"
    echo "|---|---:|---:|"
    echo "| idle, just started (before any request) | $(kib_to_mib "$SG_RSS_IDLE_FRESH") | |"
    echo "| idle, after the load modes (peak during them: $(kib_to_mib "$SG_HWM_TOTAL") MiB) | $(kib_to_mib "$SG_RSS_IDLE_AFTER") | |"
    for hold in keep-alive open; do
        local what
        case $hold in
            keep-alive) what="$HOLD_CONNS keep-alive connections idle for 20 s after one request each ($(kib_to_mib "$(mem_field keep-alive fresh rss_kib)") MiB 2 s after the last one)" ;;
            open) what="$HOLD_CONNS connections open, no request sent on them" ;;
        esac
        if [[ -z ${MEM[$hold]:-} || ${MEM[$hold]} == failed* ]]; then
            echo "| $what | ${MEM[$hold]:-not measured} | |"
            continue
        fi
        before=$(mem_field "$hold" before rss_kib)
        held=$(mem_field "$hold" held rss_kib)
        echo "| $what, on a fresh scoregate ($(mem_field "$hold" alive responses_2xx) answered 2xx, $(mem_field "$hold" alive responses_failed) failed; $(mem_field "$hold" alive conns) still open when measured) | $(kib_to_mib "$held") | $(awk -v a="$held" -v b="$before" -v n="$HOLD_CONNS" 'BEGIN { printf "%.1f", (a - b) / n }') |"
    done
}

targets_section() {
    local http_sg http_best cpu_sg cpu_ng t_sg t_ng hs_sg hs_ng lat
    echo "| target (issue 6) | measured | status |"
    echo "|---|---|---|"
    verdict() { awk -v ok="$1" 'BEGIN { print (ok == "nan" ? "not measured" : (ok ? "met" : "missed")) }'; }
    if [[ " $MODES " == *" http "* ]]; then
        http_sg=$(col http scoregate 4 | median)
        http_best=$( (col http nginx 4 | median; col http haproxy 4 | median) | maximum)
        cpu_sg=$(col http scoregate 8 | median)
        cpu_ng=$(col http nginx 8 | median)
        echo "| HTTP keep-alive req/s ≥ 1.1× the better of nginx and HAProxy | $(ratio "$http_sg" "$http_best")× | $(verdict "$(awk -v a="$http_sg" -v b="$http_best" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : (a >= 1.1 * b) }')") |"
        echo "| HTTP keep-alive proxy CPU/req ≤ 0.75× nginx | $(ratio "$cpu_sg" "$cpu_ng")× | $(verdict "$(awk -v a="$cpu_sg" -v b="$cpu_ng" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : (a <= 0.75 * b) }')") |"
    fi
    if [[ " $MODES " == *" https "* ]]; then
        t_sg=$(col https scoregate-tls 8 | median)
        t_ng=$(col https nginx-tls 8 | median)
        echo "| HTTPS keep-alive proxy CPU/req ≤ 0.75× nginx | $(ratio "$t_sg" "$t_ng")× | $(verdict "$(awk -v a="$t_sg" -v b="$t_ng" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : (a <= 0.75 * b) }')") |"
    fi
    if [[ " $MODES " == *" handshake "* ]]; then
        hs_sg=$(col handshake scoregate-tls 8 | median)
        hs_ng=$(col handshake nginx-tls 8 | median)
        echo "| New TLS connection: proxy CPU/handshake ≤ 0.6× nginx | $(ratio "$hs_sg" "$hs_ng")× | $(verdict "$(awk -v a="$hs_sg" -v b="$hs_ng" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : (a <= 0.6 * b) }')") |"
    fi
    if [[ " $MODES " == *" latency "* ]]; then
        lat=$(awk -v a="$(col latency scoregate 6 | median)" -v b="$(col latency direct 6 | median)" 'BEGIN { print (a == "nan" || b == "nan") ? "nan" : a - b }')
        echo "| Added p99 at $LAT_RATE req/s ≤ 1 ms over direct | $(fmt "$lat" "%+.3f ms") | $(verdict "$(awk -v a="$lat" 'BEGIN { print (a == "nan") ? "nan" : (a <= 1) }')") |"
    fi
    if [[ " $MODES " == *" memory "* ]]; then
        local held
        held=$(mem_field keep-alive held rss_kib)
        echo "| RSS ≤ 30 MB idle | $(kib_to_mib "$SG_RSS_IDLE_FRESH") MiB | $(verdict "$(awk -v k="$SG_RSS_IDLE_FRESH" 'BEGIN { print (k * 1024 <= 30e6) }')") |"
        echo "| RSS ≤ 100 MB with $HOLD_CONNS idle keep-alive connections | $(kib_to_mib "$held") MiB | $(verdict "$(awk -v k="$held" 'BEGIN { print (k == "") ? "nan" : (k * 1024 <= 100e6) }')") |"
    fi
}

sg_version=$("$SCOREGATE_BIN" --version 2>/dev/null || echo scoregate)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || git_rev="$git_rev (with uncommitted changes in src/ or Cargo.*)"
{
    echo "# scoregate vs nginx vs HAProxy: end-to-end benchmark"
    echo
    if ((QUICK)); then
        echo "> **Quick mode (\`--quick\`): a smoke test of the harness, 1 round of 3 s runs. These figures are not a measurement.**"
        echo
    fi
    echo "- Date: $STARTED_AT (load average at start: $LOAD_START; at end: $LOAD_END — figures mean little unless the machine was otherwise idle)"
    echo "- Command: \`$COMMAND_LINE\`"
    echo "- Machine: $(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs ($(lscpu | awk -F: '/^Thread\(s\) per core/ { gsub(/ /, "", $2); print $2 " thread(s) per core" }'); $(lscpu | awk -F: '/^Hypervisor vendor/ { gsub(/^ +/, "", $2); print "hypervisor " $2 }')), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(awk -F= '$1 == "PRETTY_NAME" { gsub(/"/, "", $2); print $2 }' /etc/os-release), kernel $(uname -r) $(uname -m)"
    echo "- Versions: $sg_version ($SG_BUILD, git $git_rev); $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(haproxy -v | head -n 1 | awk '{ print "haproxy " $3 }'); $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }'); $(oha --version); $(openssl version | awk '{ print $1, $2 }')"
    echo
    echo "## Settings"
    echo
    echo "Method of \`benches/README.md\`, split layout: servers (backend and every proxy) pinned to CPU $SERVER_CPU with \`taskset\`, load generator pinned to CPU $LOADGEN_CPU; one worker each (nginx \`worker_processes 1\`, haproxy \`nbthread 1\`, scoregate \`--workers 1\` = a current-thread runtime); runs interleaved A B C D A B C D …, $ROUNDS round(s), each recorded run preceded by a ${WARMUP} s unrecorded warm-up against the same target; figures are the median of the rounds; spread = (max−min)/median of the rate."
    echo
    echo "- Request, identical for every target: \`POST $SCORE_PATH\` (direct: \`POST /score\`), \`Authorization: Bearer <key>\`, \`Content-Type: application/json\`, 46-byte JSON body; response: 107-byte JSON from the backend (nginx \`return 200\`, 1 worker, keep-alive 1e8 requests/75 s, \`stub_status\` counts its new connections)."
    echo "- nginx: \`upstream { keepalive 128; keepalive_requests 1e8; keepalive_timeout 75s; }\`, \`proxy_http_version 1.1\`, \`Connection \"\"\`, buffering on (default), client \`keepalive_requests 1e8\`, \`access_log off\`; rewrites the path to the backend's \`/score\`."
    echo "- haproxy: \`mode http\`, \`option http-keep-alive\`, \`http-reuse always\`, \`maxconn 4096\`, timeouts 5 s/30 s/30 s, \`timeout http-keep-alive 75s\`, no logging, no health checks; \`set-path /score\`."
    echo "- scoregate: \`serve --workers 1 --access-log off\`, routes file with endpoint \`$ENDPOINT\` in key auth mode, traffic \`blue: 100\` to one deployment whose one pod is the backend, **admission on** (\`max_concurrent_requests_per_instance: $SG_CAP\`, above the $CONNS client connections so it never throttles; \`max_queue_wait_ms: 500\`), metrics on, \`upstream.idle_timeout_ms: 75000\` (the same pool lifetime as nginx). Checked before the runs: a wrong key gets 401, and responses carry \`azureml-model-deployment: blue\`."
    echo "- TLS: a fresh self-signed ECDSA P-256 certificate for IP 127.0.0.1 (openssl, in a mktemp directory), the same for every server; TLS 1.2 and 1.3 allowed; session resumption off everywhere (nginx \`ssl_session_cache off; ssl_session_tickets off\`, haproxy \`tune.ssl.cachesize 0\` + \`no-tls-tickets\`, scoregate \`--tls-session-resumption false\`). Checked with \`openssl s_client -sess_out/-sess_in\`: $(for t in direct-tls nginx-tls haproxy-tls scoregate-tls; do [[ -n ${TLS_INFO[$t]:-} ]] && printf '%s %s; ' "$t" "${TLS_INFO[$t]}"; done)"
    echo "- Modes: **http** and **https**: wrk 4.1 \`-t1 -c$CONNS -d${DURATION}s\` with a Lua POST script (percentiles from wrk's histogram); **handshake**: oha \`--disable-keepalive -c $HS_CONNS -z ${HS_DURATION}s --worker-threads 1\`, one new TLS connection per request (rate = connections/s); **latency**: oha \`-q $LAT_RATE --latency-correction -c $LAT_CONNS -z ${LAT_DURATION}s\` over plain HTTP keep-alive, added latency = target percentile − direct percentile (medians of rounds); **memory**: scoregate's VmRSS idle (just started, and after the load modes), then on a freshly started scoregate with $HOLD_CONNS keep-alive client connections held idle after one request each, and on another with $HOLD_CONNS connections open and no request sent (\`benches/e2e/holdconns.rs\`; each reading starts from a fresh process; keep-alive connections are read 2 s after the last one opened and again after 20 s idle, when scoregate has parked them and returned the freed pages); per connection = (RSS held − RSS before) ÷ $HOLD_CONNS."
    echo "- Columns: *proxy CPU µs/req* = utime+stime of the proxy's processes and threads (\`/proc/PID/stat\`, $CLK_TCK ticks/s) over the recorded run ÷ requests completed; *proxy user µs/req* and *proxy sys µs/req* = the same for utime alone (the proxy's own code and its libraries) and stime alone (the kernel working for it: system calls, and the TCP receive path of the loopback packets it sends, which Linux runs in the sender's context), each the median of the rounds, so the two need not add up exactly to the total; the kernel charges a whole timer tick to user or system by what was running when it fired, so the split is a sample while the total is exact (\`benches/KERNEL.md\`); *peak RSS* = VmHWM summed over the proxy's processes, reset (\`clear_refs\` 5) before each run, max over rounds; *server/loadgen CPU busy* from \`/proc/stat\` for CPU $SERVER_CPU and CPU $LOADGEN_CPU; *new backend conns/run* from the backend's \`stub_status\`; *errors* = socket errors, timeouts and non-200 answers summed over rounds (oha's requests cut off at the end of a run are not counted)."
    echo
    echo "## Results"
    for mode in http https handshake; do
        [[ " $MODES " == *" $mode "* ]] || continue
        echo
        case $mode in
            http) echo "### HTTP keep-alive ($CONNS connections)" ;;
            https) echo "### HTTPS keep-alive ($CONNS connections)" ;;
            handshake) echo "### New TLS connection per request ($HS_CONNS connections, resumption off)" ;;
        esac
        echo
        if [[ $mode == handshake ]]; then
            throughput_table "$mode" "conn/s" conn
        else
            throughput_table "$mode" "req/s" req
        fi
    done
    if [[ " $MODES " == *" latency "* ]]; then
        echo
        echo "### Added latency at a fixed $LAT_RATE req/s (HTTP keep-alive)"
        echo
        latency_table
    fi
    if [[ " $MODES " == *" memory "* ]]; then
        echo
        echo "### Memory (scoregate, plain HTTP listener)"
        echo
        memory_section
    fi
    echo
    echo "### Against the targets of issue 6"
    echo
    targets_section
    echo
    echo "Where a target is missed, \`benches/PROFILE.md\` has the profile that explains it (instructions per"
    echo "request by crate and function, from \`benches/profile/callgrind.sh\`) and what would close it."
    echo
    echo "### scoregate's own counters at the end"
    echo
    echo '```'
    grep -E '^scoregate_(requests_total|queue_wait_seconds_count|queue_depth|in_flight_requests)[{ ]' <<<"$SG_METRICS" | head -n 20 || echo "(no request counters found at http://127.0.0.1:$P_SCOREGATE_ADMIN/metrics)"
    echo '```'
    echo
    echo "<details><summary>Every recorded run</summary>"
    echo
    echo "| $(head -n 1 "$RUNS" | sed 's/\t/ | /g') |"
    echo "|$(head -n 1 "$RUNS" | awk -F'\t' '{ for (i = 1; i <= NF; i++) printf "---|" }')"
    tail -n +2 "$RUNS" | awk -F'\t' -v OFS=' | ' '{ $4 = sprintf("%.0f", $4); $1 = $1; print "| " $0 " |" }'
    echo
    echo "</details>"
} >"$OUT"

echo
cat "$OUT"
log "report written to $OUT"
