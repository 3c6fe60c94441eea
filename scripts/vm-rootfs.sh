#!/usr/bin/env bash
# The Debian bookworm root file system that `make vm-test` boots its machines from (systemd
# as PID 1 in a container: tests/vm/README.md). Built with debootstrap from Debian's own
# packages and cached under $MUSICFS_VM_CACHE (default /var/cache/musicfs-vm), keyed by a
# hash of this script: change the recipe and the next run builds a new one (and drops the
# old). Prints the root's path. A machine without the cache builds it (about a minute).
set -euo pipefail
cache=${MUSICFS_VM_CACHE:-/var/cache/musicfs-vm}
mirror=${MUSICFS_VM_MIRROR:-http://deb.debian.org/debian}
packages=(
  systemd systemd-sysv dbus fuse3 python3 python3-venv
  openssh-server openssh-client iproute2 nftables netcat-openbsd
  procps psmisc util-linux mount e2fsprogs findutils
)
# Units a container has no use for (consoles, hardware, timers that would wake up mid-test).
masked=(
  getty@tty1.service console-getty.service serial-getty@.service systemd-udevd.service
  systemd-udev-trigger.service systemd-udev-settle.service apt-daily.timer
  apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
  systemd-networkd-wait-online.service systemd-timesyncd.service man-db.timer
  dpkg-db-backup.timer systemd-tmpfiles-clean.timer
)

key=$(sha256sum "$0" | cut -c1-16)
root=$cache/rootfs-$key
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [ ! -e "$root/.complete" ]; then
  for old in "$cache"/rootfs-*; do [ "$old" = "$root" ] || rm -rf "$old"; done
  command -v debootstrap >/dev/null || { echo "vm-rootfs: debootstrap not found (scripts/setup-debian.sh vm)" >&2; exit 1; }
  echo "vm-rootfs: debootstrap bookworm into $root (cached for later runs)" >&2
  rm -rf "$root.tmp"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    bookworm "$root.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
  chroot "$root.tmp" systemctl mask "${masked[@]}" >/dev/null 2>&1
  : >"$root.tmp/etc/machine-id"
  rm -f "$root.tmp"/var/cache/apt/archives/*.deb
  touch "$root.tmp/.complete"
  mv "$root.tmp" "$root"
fi
echo "$root"
