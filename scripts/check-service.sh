#!/usr/bin/env bash
# dist/musicfs.service must satisfy systemd's own verifier (needs no running systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/musicfs.service ] || exit 0
if ! command -v systemd-analyze >/dev/null; then
  echo "check-service: systemd-analyze not found (scripts/setup-debian.sh test installs systemd)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The unit names its binary by absolute path; point it at a stand-in so verify can stat it.
sed "s#/usr/bin/musicfs#$tmp/musicfs#g" dist/musicfs.service > "$tmp/musicfs.service"
printf '#!/bin/sh\n' > "$tmp/musicfs" && chmod +x "$tmp/musicfs"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$tmp/musicfs.service" 2>&1 || true)
echo "$out" | grep -v -E 'is not a directory|Failed to prepare filename|fusermount3.*No such file|^$' | tee "$tmp/problems" >&2 || true
[ ! -s "$tmp/problems" ]
