#!/usr/bin/env bash
# Every .nix file must parse. Nix is part of `setup-debian.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nix-instantiate >/dev/null; then
  echo "check-nix: nix-instantiate not found (scripts/setup-debian.sh test installs nix-bin)" >&2
  exit 1
fi
# Parsing needs no Nix state, but nix-instantiate sets up its state dir first, and as a
# normal user it cannot chmod Debian's root-owned /nix/var/nix: give it a scratch one.
NIX_STATE_DIR=$(mktemp -d)
export NIX_STATE_DIR NIX_CONFIG="build-users-group ="  # no builds here: no build users
trap 'rm -rf "$NIX_STATE_DIR"' EXIT
status=0
while IFS= read -r f; do
  nix-instantiate --parse "$f" >/dev/null || { echo "check-nix: $f does not parse" >&2; status=1; }
done < <(git ls-files '*.nix' 2>/dev/null || find . -name '*.nix' -not -path './.venv/*')
exit $status
