#!/usr/bin/env bash
# CI's imitation of `nix build .#musicfs` where Nix cannot run: the package's source exactly
# as nix/package.nix selects it (nix/package.toml, read by both), built into a wheel in the
# source folder and installed, non-editable, into a fresh prefix; then its checkPhase's test
# command inside bubblewrap, the way the Nix sandbox runs it: uid 1000 / gid 100, no
# network, a minimal /dev, no /sys, no /tmp, only /bin/sh at an FHS path (the tools on
# PATH live under /nix/store/...), HOME=/homeless-shelter, TMPDIR=/build. Once in pytest's
# default import mode (the source folder on sys.path) and once with --import-mode=importlib
# (musicfs imported from the installed prefix, as nixpkgs' newer pytestCheckHook does).
#
# Usage: scripts/nix-sandbox-check.sh [MODE...]    MODE: prepend (default) and/or importlib
# Needs root or unprivileged user namespaces, bubblewrap (setup-debian.sh test) and the
# network for pip (the same index `make setup` uses; its cache keeps this quick).
set -euo pipefail
cd "$(dirname "$0")/.."
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(prepend importlib)

command -v bwrap >/dev/null || { echo "nix-sandbox: bwrap not found (scripts/setup-debian.sh test)" >&2; exit 1; }
dev_python=${PYTHON:-.venv/bin/python}
base_python=$("$dev_python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')

# Not under /tmp: $out is bound at its own path, which would make a /tmp in the sandbox.
work=$(mktemp -d /var/tmp/musicfs-nix-sandbox.XXXXXX)
trap 'rm -rf "$work"' EXIT
build=$work/build # /build inside the sandbox, as Nix's sandbox-build-dir
out=$work/out     # $out: the installed package (a venv, so its libraries come along)
mkdir -p "$build/source" "$work/etc"

# -- unpackPhase: the fileset of nix/package.nix, from git's files (a flake's source is
# git's tracked files; untracked ones not ignored are added, so a new test runs before
# `git add`). A file a test reads that package.toml leaves out is missing here too.
mapfile -t source_paths < <("$dev_python" -c '
import tomllib, sys
print("\n".join(tomllib.load(open("nix/package.toml", "rb"))["source"]))')
mapfile -t disabled < <("$dev_python" -c '
import tomllib
print("\n".join(tomllib.load(open("nix/package.toml", "rb"))["disabledTestPaths"]))')
git ls-files -z --cached --others --exclude-standard -- "${source_paths[@]}" | tar --null -T - -cf - | tar -xf - -C "$build/source"

# -- buildPhase / installPhase: pypaBuildHook writes the wheel to dist/, pypaInstallHook
# installs it into $out. The wheel is built without isolation from the build-system
# requirement, as nixpkgs does; the test tools are nativeCheckInputs.
echo "nix-sandbox: building the wheel and installing it into a fresh prefix"
quietly() { "$@" >>"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }; }
quietly "$base_python" -m venv --copies "$out"
pip=("$out/bin/python" -m pip --disable-pip-version-check)
quietly "${pip[@]}" install "setuptools>=77" wheel
(cd "$build/source" && quietly "${pip[@]}" wheel --no-deps --no-build-isolation --wheel-dir dist .)
quietly "${pip[@]}" install "$build/source"/dist/musicfs-*.whl pytest pytest-timeout hypothesis

# -- the sandbox's /etc and tools: Nix's own passwd/group/hosts; coreutils & co. (and
# ffmpeg, a nativeCheckInput) reachable through PATH only, the way stdenv puts them there;
# the loader's cache and Debian's alternatives stand in for their store closures.
cat >"$work/etc/passwd" <<'EOF'
root:x:0:0:Nix build user:/build:/noshell
nixbld:x:1000:100:Nix build user:/build:/noshell
nobody:x:65534:65534:Nobody:/:/noshell
EOF
cat >"$work/etc/group" <<'EOF'
root:x:0:
nixbld:!:100:
nogroup:x:65534:
EOF
printf '127.0.0.1 localhost\n::1 localhost\n' >"$work/etc/hosts"
tools=/nix/store/00000000000000000000000000000000-stdenv-tools

sandbox=(
  bwrap --unshare-all --uid 1000 --gid 100 --hostname localhost
  --die-with-parent --new-session --clearenv
  --ro-bind /usr/lib /usr/lib --ro-bind /usr/lib64 /usr/lib64
  --symlink usr/lib /lib --symlink usr/lib64 /lib64
  --ro-bind /usr/bin/dash /bin/sh
  --ro-bind /usr/bin "$tools/bin"
  --ro-bind /etc/ld.so.cache /etc/ld.so.cache --ro-bind /etc/alternatives /etc/alternatives
  --ro-bind "$out" "$out"
  --ro-bind "$work/etc/passwd" /etc/passwd --ro-bind "$work/etc/group" /etc/group
  --ro-bind "$work/etc/hosts" /etc/hosts
  --dev /dev --proc /proc
  --bind "$build" /build --chdir /build/source
  --setenv PATH "$out/bin:$tools/bin"
  --setenv HOME /homeless-shelter
  --setenv NIX_BUILD_TOP /build --setenv NIX_STORE /nix/store --setenv NIX_BUILD_CORES "$(nproc)"
  --setenv TMPDIR /build --setenv TEMPDIR /build --setenv TMP /build --setenv TEMP /build
  --setenv SOURCE_DATE_EPOCH 315532800 --setenv PYTHONHASHSEED 0 --setenv PYTHONNOUSERSITE 1
)

# What the sandbox really is, so that a loosened imitation fails here rather than passing.
"${sandbox[@]}" /bin/sh -c '
  fail() { echo "nix-sandbox: not like the Nix sandbox: $*" >&2; exit 1; }
  [ "$(id -u):$(id -g)" = 1000:100 ] || fail "uid:gid $(id -u):$(id -g)"
  [ ! -e /sys/kernel ] || fail "/sys is mounted"
  [ ! -e /tmp ] || fail "/tmp exists"
  [ ! -e /bin/false ] && [ ! -e /usr/bin/env ] || fail "FHS tools besides /bin/sh"
  [ ! -e "$HOME" ] || fail "HOME exists"
  [ "$(ls /dev | wc -l)" -lt 20 ] || fail "a full /dev"
  [ "$(ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " ")" = lo ] \
    || fail "network interfaces besides lo"
'

# -- checkPhase: pytestCheckHook's command (the pytest executable, not `python -m pytest`,
# so the source folder is on sys.path only if the import mode puts it there). A probe
# plugin records which musicfs the tests imported: the two modes must differ in that.
mkdir -p "$build/probe"
cat >"$build/probe/nix_sandbox_probe.py" <<'EOF'
import os
import sys


def pytest_unconfigure(config):
    module = sys.modules.get("musicfs")
    with open(os.environ["PROBE_OUT"], "w") as out:
        out.write(getattr(module, "__file__", "not imported"))
EOF
ignore=()
for path in "${disabled[@]}"; do ignore+=("--ignore-glob=$path"); done
status=0
for mode in "${modes[@]}"; do
  case "$mode" in
    prepend) flags=() expect=/build/source/musicfs/__init__.py ;;
    importlib) flags=(--import-mode=importlib) expect=$out/lib/ ;;
    *) echo "nix-sandbox: unknown mode $mode (prepend, importlib)" >&2; exit 2 ;;
  esac
  echo "nix-sandbox: checkPhase, import mode $mode: pytest ${ignore[*]} ${flags[*]}"
  "${sandbox[@]}" --setenv PYTHONPATH /build/probe --setenv PROBE_OUT /build/probe/imported \
    pytest "${ignore[@]}" "${flags[@]}" -p nix_sandbox_probe -p no:cacheprovider || status=1
  imported=$(cat "$build/probe/imported" 2>/dev/null || echo "no record")
  echo "nix-sandbox: import mode $mode tested the musicfs at $imported"
  case "$imported" in
    "$expect"*) ;;
    *) echo "nix-sandbox: expected the musicfs under $expect" >&2; status=1 ;;
  esac
done
exit $status
