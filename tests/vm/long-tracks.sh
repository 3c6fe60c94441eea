#!/usr/bin/env bash
# Usage: long-tracks.sh LIBRARY COUNT -- add COUNT long tracks (8 MiB) to a demo library in
# place, under "Long Player/". A tag scan reads only the first and last chunks of an MP3,
# so most of each long track is still uncached after the scan: reading one through the
# mount must go to the origin. Used by nixos/tests/common.nix and tests/vm alike.
set -euo pipefail
library=$1 count=$2
first_mp3=$(find "$library" -name '*.mp3' | sort | head -n 1)
mkdir -p "$library/Long Player"
for n in $(seq 1 "$count"); do
  cp "$first_mp3" "$library/Long Player/long-$n.mp3"
  # Deterministic filler, different for every track: a counter hashed block by block.
  # (No `| head -c`: under pipefail its early exit would fail the pipe with SIGPIPE.)
  for block in $(seq 1 256); do
    hash=$(printf '%s-%s' "$n" "$block" | sha256sum)
    awk -v h="${hash:0:64}" 'BEGIN { for (i = 0; i < 512; i++) printf "%s", h }'
  done >>"$library/Long Player/long-$n.mp3"
done
