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

# The host's runtime dir is not ours inside (its owner maps to nobody); the tests and the
# daemons they start get a fresh one, like every other /run path, on the namespace's tmpfs.
exec unshare --user --map-root-user --map-auto --net --mount --fork -- bash -c '
  set -euo pipefail
  ip link set lo up
  mount -t tmpfs -o mode=0755 tmpfs /run
  mkdir -p /run/netns /run/sshd /run/user/0
  chmod 0700 /run/user/0
  export XDG_RUNTIME_DIR=/run/user/0 MUSICFS_IN_TEST_NAMESPACE=1
  exec "$@"
' musicfs-test-namespace "$@"
