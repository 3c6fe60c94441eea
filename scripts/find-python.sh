#!/bin/sh
# Print the first Python >= 3.11 on PATH (MusicFS's minimum); fail, saying so, if none.
for p in python3 python3.13 python3.12 python3.11; do
  if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$p"
    exit 0
  fi
done
echo "find-python: no Python >= 3.11 found (python3, python3.11 ... python3.13)" >&2
exit 1
