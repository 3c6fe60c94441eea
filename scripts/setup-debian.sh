#!/usr/bin/env bash
# Install the Debian/Ubuntu packages MusicFS needs. Usage: setup-debian.sh [run|test|bench]
#   run   - what the daemon and the demo need (FUSE 3, a compiler for pyfuse3, Python venv)
#   test  - plus what the process, network and end-to-end test layers run against (sshd,
#           nftables, iproute2, systemd-analyze, nix-instantiate for parse checks; the
#           players and scanners: ffmpeg/ffprobe, mpv, mpd, mpc; sshfs and rclone for
#           the benchmark smoke test; bubblewrap for the Nix build sandbox imitation,
#           debootstrap for the VM scenarios' rootfs; uidmap for a normal user's run of
#           the root-only layers in a user namespace: scripts/test-as-namespace-root.sh)
#   bench - plus the baselines the benchmarks compare with (sshfs, rclone), ffprobe as the
#           library scanner, tc (iproute2) for the shaped link
set -euo pipefail
level=${1:-run}
pkgs=(fuse3 libfuse3-dev pkg-config gcc make python3 python3-venv python3-dev)
# MusicFS needs Python >= 3.11: Debian 12's python3 is 3.11, Ubuntu 22.04's is 3.10 (its
# python3.11 package is the one to use there; the Makefile picks the newest it finds).
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  && ! command -v python3.11 >/dev/null; then
  pkgs+=(python3.11 python3.11-venv python3.11-dev)
fi
case "$level" in
  run) ;;
  test) pkgs+=(openssh-server openssh-client nftables iproute2 systemd procps psmisc nix-bin
               ffmpeg mpv mpd mpc sshfs rclone bubblewrap debootstrap uidmap) ;;
  bench) pkgs+=(openssh-server openssh-client nftables iproute2 procps sshfs rclone ffmpeg) ;;
  *) echo "usage: $0 [run|test|bench]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    # A minimal Debian has no sudo: say what root has to run instead of failing on it.
    echo "setup-debian.sh: not root and sudo is not installed; run this as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    echo "(or install sudo, or run: su -c '$0 $level')" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing: ${missing[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
