#!/usr/bin/env bash
# Where the proxy's system time goes (benches/KERNEL.md): nginx and one or more scoregate
# binaries under the keep-alive load of run.sh's http/https modes (wrk -t1 -c64, servers on CPU
# 0, wrk on CPU 1), interleaved rounds, and per request: user and system CPU of the proxy and of
# the backend, TCP segments (nstat, the whole loopback: both legs, both directions), pure ACKs,
# delayed ACKs, the proxy's context switches and minor page faults; and the backend's user and
# system CPU (one receive and one send per request: the floor a proxy pays twice); the proxy's
# peak RSS during the run (VmHWM, reset before it) and its anonymous memory at the end.
#
#   KEEP_WORK=1 benches/e2e/run.sh --quick --modes http --out /tmp/quick.md   # makes WORK
#   benches/e2e/kernel.sh WORK label=BINARY[,VAR=VALUE...] ...                # then this
#
# Each label=BINARY is one scoregate variant (started once, with the optional environment
# variables; the `--workers 1 --access-log off` command line of run.sh). Environment:
# ROUNDS (3), DURATION (10 s), WARMUP (2 s), PROTO (http or https), CONNS (64),
# STRACE=1 (one more run per target under `strace -c -f`: system calls per request),
# PERF=1 (one more run per target under `perf record -e cpu-clock -C 0 -g`: where CPU 0's time
# goes, by process, and the proxy's top functions, kernel ones marked [k]), TRACE=1 (one more run
# per target with the syscall tracepoints counted by `perf stat` and epoll_wait's results
# recorded: calls per request without strace's slowdown, and events per epoll_wait).
set -euo pipefail
WORK=${1:?usage: kernel.sh WORK label=BINARY[,VAR=VALUE...] ...}
shift
(($#)) || { echo "kernel.sh: name at least one scoregate binary" >&2; exit 2; }
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} PROTO=${PROTO:-http}
CONNS=${CONNS:-64}
CLK_TCK=$(getconf CLK_TCK)
SCORE_PATH=/api/v1/endpoint/bench-ep/score
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
for p in 18080 18081 18091; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "port $p is in use" >&2; exit 1; }
done

declare -A PID_OF=() URL_OF=()
start() { # NAME ENV COMMAND...: on CPU 0
    local name=$1 env=$2
    shift 2
    # shellcheck disable=SC2086
    env ${env//,/ } taskset -c 0 "$@" >"$WORK/kernel-$name.log" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=($!)
}
start backend "" nginx -c "$WORK/nginx-backend.conf" -g 'daemon off;'
start nginx "" nginx -c "$WORK/nginx-proxy.conf" -g 'daemon off;'
if [[ $PROTO == https ]]; then URL_OF[nginx]=https://127.0.0.1:18091$SCORE_PATH; else URL_OF[nginx]=http://127.0.0.1:18081$SCORE_PATH; fi
TARGETS=(nginx)
i=0
for spec in "$@"; do
    label=${spec%%=*} rest=${spec#*=}
    bin=${rest%%,*} env=""
    [[ $rest == *,* ]] && env=${rest#*,}
    plain=$((18200 + 4 * i)) tls=$((18201 + 4 * i)) admin=$((18202 + 4 * i))
    start "$label" "$env" "$bin" serve --config "$WORK/scoregate.yaml" --routes "$WORK/routes.yaml" \
        --workers 1 --access-log off --allow-insecure-connections --listen "127.0.0.1:$plain" \
        --admin-listen "127.0.0.1:$admin" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
        --tls-listen "127.0.0.1:$tls" --tls-session-resumption false
    if [[ $PROTO == https ]]; then URL_OF[$label]=https://127.0.0.1:$tls$SCORE_PATH; else URL_OF[$label]=http://127.0.0.1:$plain$SCORE_PATH; fi
    TARGETS+=("$label")
    i=$((i + 1))
done
for t in "${TARGETS[@]}"; do
    for _ in $(seq 100); do
        curl -sk -o /dev/null -X POST -H 'Authorization: Bearer bench-primary-key-0123456789abcdef' "${URL_OF[$t]}" && break
        sleep 0.1
    done
done

tree() { local p; for p in "$@"; do echo "$p"; pgrep -P "$p" || true; done; }
# counters PID: "utime stime minflt voluntary nonvoluntary" over the process tree (all threads)
counters() {
    local p u=0 s=0 f=0 v=0 n=0 stat fields
    for p in $(tree "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -ra fields <<<"${stat##*) }"
        u=$((u + fields[11])) s=$((s + fields[12])) f=$((f + fields[7]))
        read -r a b < <(cat /proc/"$p"/task/*/status 2>/dev/null |
            awk '$1 == "voluntary_ctxt_switches:" { v += $2 } $1 == "nonvoluntary_ctxt_switches:" { n += $2 } END { print v + 0, n + 0 }')
        v=$((v + a)) n=$((n + b))
    done
    echo "$u $s $f $v $n"
}
# VmHWM is reset before each run (clear_refs 5): memory_kib gives the run's peak RSS and the
# anonymous memory (heap, stacks) at its end, summed over the process tree.
reset_hwm() { local p; for p in $(tree "$1"); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
memory_kib() {
    local p
    for p in $(tree "$1"); do cat "/proc/$p/status" 2>/dev/null || true; done |
        awk '$1 == "VmHWM:" { h += $2 } $1 == "RssAnon:" { a += $2 } END { print h + 0, a + 0 }'
}
NSTAT_KEYS="TcpOutSegs TcpInSegs TcpExtTCPPureAcks TcpExtDelayedACKs TcpExtTCPHPAcks TcpExtTCPHPHits TcpExtTCPBacklogCoalesce TcpExtTCPAutoCorking"
nstat_now() { nstat -az $NSTAT_KEYS | awk 'NR > 1 { printf "%s=%s ", $1, $2 } END { print "" }'; }
wrk_run() { # URL SECONDS
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$2s" --timeout 5s -s "$WORK/post.lua" "$1"
}
# load_traced URL PID...: loads URL for 5 s while the tracers PID... (started just before, in
# this shell) watch, then stops them with SIGINT so they write their results, and waits for them.
# wrk's output is left in LOADED and its request count in LOADED_REQS. The tracers are given
# 0.5 s to attach first (they count that idle time too, which adds no requests).
load_traced() {
    local url=$1
    shift
    sleep 0.5
    LOADED=$(wrk_run "$url" 5)
    kill -INT "$@"
    wait "$@" || true
    LOADED_REQS=$(awk -F'[ =]' '/^RESULT/ { print $3 }' <<<"$LOADED")
}

printf 'target\tround\treq_s\tproxy_user_us\tproxy_sys_us\tbackend_user_us\tbackend_sys_us\tout_segs\tin_segs\tpure_acks\tdelayed_acks\thp_acks\tproxy_vcsw\tproxy_ivcsw\tproxy_minflt\tproxy_hwm_mib\tproxy_anon_mib\n' >"$WORK/kernel.tsv"
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        wrk_run "${URL_OF[$t]}" "$WARMUP" >/dev/null
        reset_hwm "${PID_OF[$t]}"
        read -r u0 s0 f0 v0 n0 <<<"$(counters "${PID_OF[$t]}")"
        read -r bu0 bs0 _ <<<"$(counters "${PID_OF[backend]}")"
        n0s=$(nstat_now)
        out=$(wrk_run "${URL_OF[$t]}" "$DURATION")
        n1s=$(nstat_now)
        read -r u1 s1 f1 v1 n1 <<<"$(counters "${PID_OF[$t]}")"
        read -r bu1 bs1 _ <<<"$(counters "${PID_OF[backend]}")"
        read -r hwm anon <<<"$(memory_kib "${PID_OF[$t]}")"
        reqs=$(awk -F'[ =]' '/^RESULT/ { print $3 }' <<<"$out")
        dur=$(awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "duration_us") print kv[2] / 1e6 } }' <<<"$out")
        awk -v OFS='\t' -v t="$t" -v r="$round" -v n="$reqs" -v d="$dur" -v hz="$CLK_TCK" \
            -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v bu=$((bu1 - bu0)) -v bs=$((bs1 - bs0)) -v f=$((f1 - f0)) \
            -v v=$((v1 - v0)) -v iv=$((n1 - n0)) -v hwm="$hwm" -v anon="$anon" -v a="$n0s" -v z="$n1s" 'BEGIN {
            split(a, A, "[ =]"); split(z, Z, "[ =]")
            for (i = 1; i in A; i += 2) d0[A[i]] = A[i + 1]
            for (i = 1; i in Z; i += 2) d1[Z[i]] = Z[i + 1]
            us = 1e6 / hz / n
            printf "%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f", t, r, n / d, u * us, s * us, bu * us, bs * us
            split("TcpOutSegs TcpInSegs TcpExtTCPPureAcks TcpExtDelayedACKs TcpExtTCPHPAcks", K, " ")
            for (k = 1; k <= 5; k++) printf "\t%.3f", (d1[K[k]] - d0[K[k]]) / n
            printf "\t%.4f\t%.4f\t%.4f\t%.1f\t%.1f\n", v / n, iv / n, f / n, hwm / 1024, anon / 1024 }' | tee -a "$WORK/kernel.tsv"
    done
done
echo
echo "medians over $ROUNDS round(s), per request ($PROTO, $CONNS connections):"
head -n 1 "$WORK/kernel.tsv" | cut -f1,3-
for t in "${TARGETS[@]}"; do
    awk -F'\t' -v t="$t" 'NR > 1 && $1 == t { for (c = 3; c <= NF; c++) v[c, ++k[c]] = $c; nc = NF }
        END { printf "%s", t
              for (c = 3; c <= nc; c++) { n = k[c]; for (i = 1; i <= n; i++) a[i] = v[c, i]
                  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
                  m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                  printf "\t%s[%s..%s]", m, a[1], a[n] }
              print "" }' "$WORK/kernel.tsv"
done

if [[ ${STRACE:-0} == 1 ]]; then
    for t in "${TARGETS[@]}"; do
        pids=$(tree "${PID_OF[$t]}" | sed 's/^/-p /' | tr '\n' ' ')
        # shellcheck disable=SC2086
        strace -c -f $pids -o "$WORK/kernel-$t.strace" 2>/dev/null &
        load_traced "${URL_OF[$t]}" $!
        reqs=$LOADED_REQS
        echo "$t under strace -c -f ($reqs requests): system calls per request"
        awk -v n="$reqs" 'NR > 2 && $4 ~ /^[0-9]+$/ && $NF != "total" && $4 / n >= 0.001 {
            printf "  %-16s %.3f (errors %.3f)\n", $NF, $4 / n, ($5 ~ /^[0-9]+$/ ? $5 / n : 0) }' "$WORK/kernel-$t.strace"
    done
fi

if [[ ${PERF:-0} == 1 ]]; then
    top() { awk -v n="$1" '/^ +[0-9.]+%/ && k++ < n { print "  " $0 }'; }
    for t in "${TARGETS[@]}"; do
        perf record -q -e cpu-clock -C 0 -g -o "$WORK/kernel-$t.perf" 2>/dev/null &
        load_traced "${URL_OF[$t]}" $!
        reqs=$LOADED_REQS
        pids=$(tree "${PID_OF[$t]}" | paste -sd,)
        echo "$t under perf ($reqs requests): CPU 0's samples by process"
        perf report -i "$WORK/kernel-$t.perf" --stdio --no-children --sort pid 2>/dev/null | top 8
        echo "$t: the proxy's own samples (pids $pids) by object, and its top 40 functions"
        perf report -i "$WORK/kernel-$t.perf" --stdio --no-children --percentage relative --pid "$pids" \
            --sort dso 2>/dev/null | top 6
        perf report -i "$WORK/kernel-$t.perf" --stdio --no-children --percentage relative --pid "$pids" \
            --sort sym -g none 2>/dev/null | top 40
    done
fi

if [[ ${TRACE:-0} == 1 ]]; then
    EVENTS=syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_getsockopt,syscalls:sys_enter_setsockopt,syscalls:sys_enter_futex,syscalls:sys_enter_madvise,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,sched:sched_switch,sched:sched_wakeup
    for t in "${TARGETS[@]}"; do
        pids=$(tree "${PID_OF[$t]}" | paste -sd,)
        perf stat -x, -e "$EVENTS" -p "$pids" -o "$WORK/kernel-$t.stat" &
        counter=$!
        perf record -q -e syscalls:sys_exit_epoll_wait,syscalls:sys_exit_recvfrom -p "$pids" -o "$WORK/kernel-$t.trace" 2>/dev/null &
        load_traced "${URL_OF[$t]}" "$counter" $!
        reqs=$LOADED_REQS
        echo "$t ($reqs requests in 5 s, counted 0.5 s longer): per request"
        awk -F, -v n="$reqs" '$3 ~ /:/ { printf "  %-34s %.3f\n", $3, $1 / n }' "$WORK/kernel-$t.stat"
        # The results are printed in hex; a negative one (an error) as 0xffff...
        perf script -i "$WORK/kernel-$t.trace" -F event,trace 2>/dev/null | awk '
            function value(h,   v, i) { if (h ~ /^0xfffff/) return -1; sub(/^0x/, "", h); v = 0
                for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
                return v }
            /sys_exit_epoll_wait/ { r = value($NF); calls++; if (r > 0) ev += r; else zero++ }
            /sys_exit_recvfrom/ { if (value($NF) < 0) again++; reads++ }
            END { printf "  epoll_wait: %d calls, %.1f events per call, %d returned nothing; recvfrom: %d calls, %d failed (EAGAIN)\n", calls, (calls ? ev / calls : 0), zero, reads, again }'
    done
fi
