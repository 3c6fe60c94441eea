#!/usr/bin/env bash
# A systemd unit must satisfy systemd's own verifier (needs no running systemd).
# Usage: check-service.sh [UNIT]   (default dist/musicfs.service)
set -euo pipefail
cd "$(dirname "$0")/.."
unit=${1:-dist/musicfs.service}
if [ ! -f "$unit" ]; then
  echo "check-service: $unit not found" >&2
  exit 1
fi
if ! command -v systemd-analyze >/dev/null; then
  echo "check-service: systemd-analyze not found (scripts/setup-debian.sh test installs systemd)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The unit names its binary by absolute path; point it at a stand-in so verify can stat it.
sed "s#/usr/bin/musicfs#$tmp/musicfs#g" "$unit" > "$tmp/musicfs.service"
printf '#!/bin/sh\n' > "$tmp/musicfs" && chmod +x "$tmp/musicfs"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$tmp/musicfs.service" 2>&1 || true)
# Tolerated: only that fusermount3 may not be installed where this runs (CI installs it).
echo "$out" | grep -v -E 'fusermount3.*(No such file|not executable)|^$' | tee "$tmp/problems" >&2 || true
[ ! -s "$tmp/problems" ]
