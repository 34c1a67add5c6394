#!/usr/bin/env bash
# Proves an image archive runs: unpacks its root filesystem from the archive itself, starts
# `scoregate serve` inside it as the image says (entrypoint, user) with the root filesystem
# read-only, waits for /readyz to answer 200, and scores a request through it to sample model
# servers running outside it on 127.0.0.1. Needs root (mount namespace, chroot), umoci, skopeo,
# curl and python3.
#
#   deploy/image/smoke-test.sh IMAGE.tar
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 IMAGE.tar" >&2
  exit 2
fi
image=$(realpath "$1")
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (it makes a mount namespace and chroots)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "smoke test FAILED: $*" >&2
  for log in "$work"/*.log; do
    [ -e "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}

# Until CONDITION (a command) succeeds, for at most 60 s.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 600); do
    "$@" && return 0
    sleep 0.1
  done
  fail "$what did not happen within 60 s"
}

skopeo --insecure-policy copy --quiet "docker-archive:$image" "oci:$work/oci:smoke"
umoci unpack --image "$work/oci:smoke" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"

# What the image says to run, and as whom (the runtime configuration umoci derived from it).
read -r entrypoint uid gid < <(python3 - "$work/bundle/config.json" <<'PY'
import json, sys
process = json.load(open(sys.argv[1]))["process"]
print(process["args"][0], process["user"]["uid"], process["user"]["gid"])
PY
)
[ "$entrypoint" = /usr/local/bin/scoregate ] || fail "entrypoint is $entrypoint, not /usr/local/bin/scoregate"
[ "$uid:$gid" = 65532:65532 ] || fail "the image runs as $uid:$gid, not 65532:65532"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sample model servers outside the image: `scoregate demo` starts four, and a routes file for
# them. (The image's own binary runs here on the host's libraries; only the router below runs
# inside the image.)
"$rootfs$entrypoint" demo --port "$(free_port)" --admin-port "$(free_port)" >"$work/demo.log" 2>&1 &
pids+=("$!")
wait_for "the sample models starting" grep -qs 'routes file' "$work/demo.log"
routes=$(sed -n 's/^ *routes file *\([^ ]*\).*/\1/p' "$work/demo.log")
key=$(sed -n 's/^ *primary key *\([^ ]*\).*/\1/p' "$work/demo.log")

# The configuration volume, as the Deployment mounts it at /etc/scoregate.
mkdir "$work/config"
cp "$routes" "$work/config/routes.yaml"
http_port=$(free_port)
admin_port=$(free_port)

# A private mount namespace: the root filesystem bound read-only, the configuration and /proc
# mounted into it, then chroot as the image's user.
# shellcheck disable=SC2016 # the inner script expands its own arguments
unshare --mount --propagation private -- /bin/sh -ec '
  rootfs=$1; config=$2; user=$3; shift 3
  mount --bind "$rootfs" "$rootfs"
  mount --bind -o ro "$config" "$rootfs/etc/scoregate"
  mount -t proc proc "$rootfs/proc"
  mount -o remount,bind,ro "$rootfs"
  exec chroot --userspec="$user" "$rootfs" "$@"
' sh "$rootfs" "$work/config" "$uid:$gid" "$entrypoint" serve \
  --routes /etc/scoregate/routes.yaml --allow-insecure-connections \
  --listen "127.0.0.1:$http_port" --admin-listen "127.0.0.1:$admin_port" \
  >"$work/router.log" 2>&1 &
router=$!
pids+=("$router")

ready() {
  kill -0 "$router" 2>/dev/null || fail "the router in the image exited"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ]
}
wait_for "/readyz answering 200" ready

# The router runs as 65532, with a root filesystem it cannot write.
# (unshare, sh and chroot each exec the next: the background job's pid is the router's.)
router_uid=$(awk '/^Uid:/ {print $2}' "/proc/$router/status")
[ "$router_uid" = 65532 ] || fail "the router runs as uid $router_uid"

status=$(curl -s -o "$work/score.json" -w '%{http_code}' -D "$work/score.headers" \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"data": [[1, 2, 3, 4]]}' "http://127.0.0.1:$http_port/api/v1/endpoint/demo/score")
[ "$status" = 200 ] || fail "scoring answered $status: $(cat "$work/score.json")"
deployment=$(sed -n 's/^azureml-model-deployment: *\([a-z]*\).*/\1/ip' "$work/score.headers")
[ -n "$deployment" ] || fail "the scored response names no deployment"
echo "image smoke test passed: /readyz 200 and a request scored by deployment $deployment, \
router as uid $router_uid on a read-only root filesystem"
