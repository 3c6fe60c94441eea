# Pieces the MusicFS VM tests share: test libraries built by MusicFS' own demo code, the
# client configuration of the outage tests, and the Python helpers every test script
# starts with.
{ self, pkgs }:

let
  package = self.packages.${pkgs.stdenv.hostPlatform.system}.musicfs;
  # The package is an application; toPythonModule lets a Python environment import it.
  python = pkgs.python3.withPackages (ps: [ (ps.toPythonModule package) ]);
in
rec {
  # Short deadlines so an outage shows within seconds (seconds, for the test scripts too).
  readDeadline = 3;

  # A MusicFS machine with the flake's module, reading `origins`. `manualStart` leaves the
  # unit stopped at boot, for tests that first put secrets in place.
  musicfsNode =
    {
      origins,
      manualStart ? false,
      outageTuning ? false,
    }:
    { lib, ... }:
    {
      imports = [ self.nixosModules.default ];
      services.musicfs = {
        enable = true;
        inherit origins;
        settings = lib.mkIf outageTuning {
          fuse.read_deadline = "${toString readDeadline}s";
          timeouts = {
            operation = "2s";
            health_interval = "2s";
          };
        };
      };
      systemd.services.musicfs.wantedBy = lib.mkIf manualStart (lib.mkForce [ ]);
    };

  # A few dozen tagged tracks in seven formats (what `musicfs demo` mounts).
  demoLibrary = pkgs.runCommand "musicfs-demo-library" { nativeBuildInputs = [ python ]; } ''
    python3 - "$out" "${package}/share/musicfs/fixtures" <<'EOF'
    import sys
    from pathlib import Path

    from musicfs.demo import build_demo_library

    print(build_demo_library(Path(sys.argv[1]), Path(sys.argv[2])), "tracks")
    EOF
  '';

  # The demo library plus two long tracks (8 MiB). A tag scan reads only the first and last
  # chunks of an MP3, so most of each long track is still uncached after the scan: reading
  # one through the mount must go to the origin, which is what the outage tests need.
  libraryWithLongTracks = pkgs.runCommand "musicfs-library-long-tracks" { } ''
    cp -r --no-preserve=mode ${demoLibrary} $out
    first_mp3=$(find $out -name '*.mp3' | sort | head -n 1)
    mkdir -p "$out/Long Player"
    for n in 1 2; do
      cp "$first_mp3" "$out/Long Player/long-$n.mp3"
      # Deterministic, incompressible-looking filler: a counter hashed block by block.
      for block in $(seq 1 256); do
        printf '%s-%s' "$n" "$block" | sha256sum | head -c 64 | \
          awk '{ for (i = 0; i < 512; i++) printf "%s", $0 }'
      done >> "$out/Long Player/long-$n.mp3"
    done
  '';

  # Prepended to every test script (the driver type-checks and lints it as one file).
  prelude = ''
    import shlex
    import time

    MNT = "/mnt/music"


    def sums(node, root: str) -> list[str]:
        """Sorted SHA-256 of every file under root: compares a mount with its origin
        whatever the tag-based names are."""
        out = node.succeed(
            f"find {shlex.quote(root)} -type f -print0 | xargs -0 -r sha256sum | cut -d' ' -f1 | sort"
        )
        return out.split()


    def wait_for_tracks(node, count: int, timeout: int = 180) -> None:
        node.wait_until_succeeds(f"test $(find {MNT} -type f | wc -l) -eq {count}", timeout=timeout)


    def main_pid(node) -> str:
        return node.succeed("systemctl show -P MainPID musicfs.service").strip()


    def restarts(node) -> int:
        return int(node.succeed("systemctl show -P NRestarts musicfs.service").strip())


    def timed(node, command: str, timeout: int) -> tuple[int, str, float]:
        """Run a shell command under `timeout` with its stderr in the output; exit status
        124 means it hung."""
        start = time.monotonic()
        status, out = node.execute(f"timeout {timeout} sh -c {shlex.quote(command)} 2>&1")
        return status, out, time.monotonic() - start


    def assert_mounted_once(node) -> None:
        node.succeed(f"stat {MNT} > /dev/null")  # ENOTCONN here would be a stale mount
        count = node.succeed(f"findmnt -n -o TARGET {MNT} | wc -l").strip()
        assert count == "1", f"{count} mounts at {MNT}"


    # -- origin outages (libraryWithLongTracks behind a remote origin) ----------------------


    def play_an_album(node) -> tuple[str, str]:
        """Read one album of short tracks through the mount, which caches it. Returns its
        files (shell-quoted, for `cat`) and the SHA-256 of their bytes in order."""
        # find rounds sizes up to the unit: -1024k is "under 1 MiB", -1M would be "empty".
        short = node.succeed(f"find {MNT} -type f -size -1024k | sort").splitlines()
        album = short[0].rsplit("/", 1)[0]
        files = " ".join(shlex.quote(f) for f in short if f.rsplit("/", 1)[0] == album)
        return files, node.succeed(f"cat {files} | sha256sum")


    def long_tracks(node) -> list[str]:
        found = sorted(node.succeed(f"find {MNT} -type f -size +4M").splitlines())
        assert len(found) == 2, f"long tracks: {found}"
        return found


    def check_outage(node, album: tuple[str, str], uncached: str, deadline: int) -> None:
        """Origin unreachable: the tree answers at once, the cached album plays, an
        uncached read fails with EIO near the read deadline instead of hanging."""
        files, album_sum = album
        status, out, took = timed(node, f"ls -lR {MNT}", 10)
        assert status == 0 and took < 4, f"ls -R during the outage: {status} after {took:.1f}s"
        status, out, took = timed(node, f"cat {files} | sha256sum", 30)
        assert status == 0 and out == album_sum, f"cached album during the outage: {out}"
        status, out, took = timed(node, f"cat {shlex.quote(uncached)} > /dev/null", 60)
        assert status not in (0, 124), f"uncached read: status {status} ({out})"
        assert "Input/output error" in out, f"uncached read failed without EIO: {out}"
        assert took < deadline + 10, f"uncached read took {took:.1f}s (deadline {deadline}s)"


    def check_recovered(node, uncached: str, expected: list[str], pid: str) -> None:
        """Origin back: the uncached read succeeds again, every byte matches, and it took
        neither a restart nor a remount."""
        node.wait_until_succeeds(f"cat {shlex.quote(uncached)} > /dev/null", timeout=120)
        assert sums(node, MNT) == expected, "bytes differ after the outage"
        assert main_pid(node) == pid and restarts(node) == 0, "the daemon was restarted"
        assert_mounted_once(node)
  '';
}
