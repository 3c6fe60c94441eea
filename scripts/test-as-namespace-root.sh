#!/usr/bin/env bash
# Run a command as root of a private user + network + mount namespace when the caller is
# not root, so a normal user's `make test` runs the layers that need root (FUSE mounts,
# network namespaces with veth, nftables counters, tc shaping, sshd dropping to `nobody`)
# without sudo and without touching the host's network: everything the tests build lives
# and dies with the namespace. Root runs the command as it is.
#
# Needs unprivileged user namespaces (Debian and Ubuntu enable them), newuidmap from the
# `uidmap` package and a subordinate id range for the user in /etc/subuid (adduser makes
# one), so that ids like `nobody` exist in the namespace for sshd's privilege separation.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
if [ "$(id -u)" -eq 0 ] || [ "${MUSICFS_IN_TEST_NAMESPACE:-}" = 1 ]; then
  exec "$@"
fi

problems=()
command -v unshare >/dev/null || problems+=("unshare (util-linux) not installed")
command -v newuidmap >/dev/null || problems+=("newuidmap not installed (scripts/setup-debian.sh test)")
grep -q "^$(id -un):" /etc/subuid 2>/dev/null \
  || problems+=("no subordinate uid range for $(id -un) in /etc/subuid (usermod --add-subuids)")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'test-as-namespace-root.sh: the root-only test layers cannot run: %s\n' "${problems[@]}" >&2
  exit 1
fi

# Inside, /run is a fresh tmpfs (the host's runtime dir is not ours there: its owner maps
# to nobody) and TMPDIR a folder of the caller's: root's /tmp/pytest-of-root, if a root
# run left one, would be someone else's. The namespace has its own pids, so when the test
# run ends every daemon and sshd it started goes with it.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/musicfs-test-ns.XXXXXX")
chmod 1777 "$tmp"  # as /tmp is: sshd's `nobody` reads the test libraries under it
unshare --user --map-root-user --map-auto --net --mount --pid --fork --mount-proc -- bash -c '
  set -uo pipefail
  ip link set lo up
  mount -t tmpfs -o mode=0755 tmpfs /run
  mkdir -p /run/netns /run/sshd /run/user/0
  chmod 0700 /run/user/0
  # The host'"'"'s /etc/shadow is unreadable here, and sshd takes an account whose shadow
  # entry it cannot read for a locked one: the tests'"'"' sshd logs in root and nobody by key.
  cut -d: -f1 /etc/passwd | sed "s/\$/:*:19000:0:99999:7:::/" > /run/shadow
  mount --bind /run/shadow /etc/shadow
  export XDG_RUNTIME_DIR=/run/user/0 MUSICFS_IN_TEST_NAMESPACE=1 TMPDIR="$0"
  "$@"
  rc=$?
  rm -rf "$0"  # as the namespace root: files the tests made as nobody too
  exit $rc
' "$tmp" "$@"
