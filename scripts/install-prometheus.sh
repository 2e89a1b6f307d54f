#!/usr/bin/env bash
# Installs Prometheus (Debian package) for tests/test_dashboard_prometheus.py; idempotent.
set -euo pipefail
if command -v prometheus >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "prometheus is missing: install it (Debian: apt-get install prometheus); its test is skipped meanwhile" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends prometheus >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
prometheus --version | head -1
