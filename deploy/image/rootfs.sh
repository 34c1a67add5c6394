#!/usr/bin/env bash
# Assembles the image's root filesystem in ROOTFS from BINARY and the Debian packages it needs at
# run time, the way distroless images are assembled from .debs: libc6 and libgcc-s1 (the
# binary's only shared libraries) and ca-certificates (for HTTPS clients: OpenTelemetry
# exporters, the Kubernetes API outside a cluster). No shell, no package manager.
#
#   deploy/image/rootfs.sh ROOTFS BINARY
#
# The packages come from the machine's configured Debian mirror (`apt-get download`), so the
# C library is the one the binary was linked against on this Debian release. Users: root (0)
# and nonroot (65532), the one the router runs as. Everything is owned by root except
# /home/nonroot; the image runs with a read-only root filesystem (nothing writes outside
# mounted volumes).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 ROOTFS BINARY" >&2
  exit 2
fi
rootfs=$1
binary=$2
[ -x "$binary" ] || { echo "$0: $binary is not an executable file" >&2; exit 1; }
if [ -e "$rootfs" ] && [ -n "$(ls -A "$rootfs")" ]; then
  echo "$0: $rootfs exists and is not empty: give a new directory" >&2
  exit 1
fi

packages=(libc6 libgcc-s1 ca-certificates)
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
# As root, apt hands downloads to its unprivileged user, who cannot write to a private directory.
sandbox=()
[ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
download() { (cd "$debs" && apt-get "${sandbox[@]}" download -q "${packages[@]}" >/dev/null); }
# A machine whose package lists were never fetched knows no package yet: fetch them (as root).
if ! download && ! { [ "$(id -u)" -eq 0 ] && apt-get update -qq && download; }; then
  echo "$0: apt-get download ${packages[*]} failed: run \`apt-get update\` (as root) and try again" >&2
  exit 1
fi
mkdir -p "$rootfs"
for deb in "$debs"/*.deb; do
  dpkg-deb --extract "$deb" "$rootfs"
done
# Documentation and maintainer data are of no use at run time.
rm -rf "$rootfs"/usr/share/{doc,man,info,lintian,locale,bug}

# The CA bundle update-ca-certificates would write (ca-certificates ships only the parts).
mkdir -p "$rootfs/etc/ssl/certs"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z |
  xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
# Mount points the container runtime and the installer's Deployment use.
mkdir -p "$rootfs"/{proc,sys,dev,tmp,root,etc/scoregate,home/nonroot}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
chmod 0750 "$rootfs/home/nonroot"

# Debug information stays out (64 of the release binary's 84 MB are line tables): symbols
# stay, so a backtrace still names its functions.
mkdir -p "$rootfs/usr/local/bin"
objcopy --strip-debug "$binary" "$rootfs/usr/local/bin/scoregate"
chmod 0755 "$rootfs/usr/local/bin/scoregate"

# Every shared library the binary asks for must be in the root filesystem.
interpreter=$(readelf --program-headers "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
missing=()
[ -z "$interpreter" ] || [ -e "$rootfs$interpreter" ] || missing+=("$interpreter")
for library in $(readelf --dynamic "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
  found=$(find "$rootfs/lib" "$rootfs/usr/lib" -name "$library" 2>/dev/null | head -n1)
  [ -n "$found" ] || missing+=("$library")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "$0: the binary needs ${missing[*]}, which ${packages[*]} do not provide: add the package to \`packages\` in $0" >&2
  exit 1
fi
