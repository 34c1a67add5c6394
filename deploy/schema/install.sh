#!/usr/bin/env bash
# Installs the schema checks' tools into DIR (default target/schema-tools), from the package
# registries only: kubernetes-validate and its dependencies, pinned in requirements.txt, in a
# Python virtual environment; the Prometheus Operator's ServiceMonitor schema from npm, pinned by
# package-lock.json. Then `SCOREGATE_SCHEMA_TOOLS=DIR cargo test -p scoregate-ext --test schemas`
# validates every rendered object (deploy/README.md, "Supported Kubernetes versions").
#
#   deploy/schema/install.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../target/schema-tools}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ ! -x "$dir/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$here/requirements.txt"
fi
cp "$here/package.json" "$here/package-lock.json" "$here/servicemonitors.mjs" "$dir/"
if [ ! -d "$dir/node_modules/@kubernetes-models/prometheus-operator" ]; then
  (cd "$dir" && npm ci --silent --no-audit --no-fund)
fi
echo "$dir"
