#!/usr/bin/env bash
# Builds the scoregate container image without a container registry or daemon: the release
# binary, a root filesystem assembled from Debian packages (deploy/image/rootfs.sh), written as an
# OCI image with umoci and saved as a docker-archive with skopeo. `docker load`, `podman load`
# and `ctr images import` all read it.
#
#   deploy/image/build.sh [--binary PATH] [--output FILE] [--tag NAME:TAG]
#
#   --binary  use this scoregate binary instead of building one (`cargo build --release`)
#   --output  the archive to write (default: scoregate-image.tar)
#   --tag     the name it loads as (default: scoregate:<version from Cargo.toml>)
#
# Needs: cargo, apt-get (a Debian or Ubuntu machine), umoci, skopeo, GNU tar
# (`apt-get install umoci skopeo`). The image runs as 65532:65532 with entrypoint
# /usr/local/bin/scoregate and works with a read-only root filesystem; its OCI labels carry
# the version, the git revision and the source repository.
set -euo pipefail
cd "$(dirname "$0")/../.."

binary=
output=scoregate-image.tar
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag="scoregate:$version"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
for tool in umoci skopeo apt-get dpkg-deb readelf tar; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing: apt-get install umoci skopeo binutils" >&2; exit 1; }
done

if [ -z "$binary" ]; then
  cargo build --release --locked --bin scoregate
  binary=target/release/scoregate
fi
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# The commit's time, so that the same commit gives the same image.
created_epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
created=$(date -u -d "@$created_epoch" +%Y-%m-%dT%H:%M:%SZ)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deploy/image/rootfs.sh "$work/rootfs" "$binary"

# One layer, every entry owned by root except the nonroot user's home, stamped with the
# commit's time and sorted, so its digest depends on the content alone.
# shellcheck disable=SC2054 # the commas belong to --pax-option
layer_options=(--sort=name --mtime="@$created_epoch" --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
tar -C "$work/rootfs" "${layer_options[@]}" --owner=0 --group=0 \
  --exclude=./home/nonroot -cf "$work/layer.tar" .
tar -C "$work/rootfs" "${layer_options[@]}" --owner=65532 --group=65532 \
  -rf "$work/layer.tar" ./home/nonroot

oci="$work/oci"
umoci init --layout "$oci"
umoci new --image "$oci:build"
umoci raw add-layer --image "$oci:build" --history.created "$created" \
  --history.created_by "deploy/image/build.sh (rootfs.sh: ${binary##*/}, libc6, libgcc-s1, ca-certificates)" \
  "$work/layer.tar"
umoci config --image "$oci:build" --created "$created" --no-history \
  --architecture "$(dpkg --print-architecture)" --os linux \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/scoregate \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.workingdir /home/nonroot \
  --config.label "org.opencontainers.image.title=scoregate" \
  --config.label "org.opencontainers.image.description=An inference router for Azure ML style online endpoints on Kubernetes" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label "org.opencontainers.image.source=$source_url" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0" \
  --config.label "org.opencontainers.image.created=$created"

rm -f "$output"
skopeo --insecure-policy copy --quiet "oci:$oci:build" "docker-archive:$output:$tag"
echo "wrote $output ($(du -h "$output" | cut -f1)): $tag, revision $revision"
echo "load it with \`docker load -i $output\`, \`podman load -i $output\` or \`ctr images import $output\`"
