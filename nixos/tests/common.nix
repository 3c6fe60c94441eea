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

  # The demo library plus `count` long tracks (8 MiB each, tests/vm/long-tracks.sh): most
  # of a long track is still uncached after the tag scan, so reading one goes to the origin.
  libraryWithLongTracks =
    count:
    pkgs.runCommand "musicfs-library-${toString count}-long-tracks" { } ''
      cp -r --no-preserve=mode ${demoLibrary} $out
      bash ${../../tests/vm/long-tracks.sh} $out ${toString count}
    '';

  # Prepended to every test script (the driver type-checks and lints it as one file): the
  # helpers of tests/vm/scenarios, which `make vm-test` runs on Debian machines too.
  prelude = builtins.readFile ../../tests/vm/scenarios/prelude.py;

  # A scenario of tests/vm/scenarios (one function, called by the test's script): the same
  # text `make vm-test` runs, so what passes there is what runs here.
  scenario = name: builtins.readFile (../../tests/vm/scenarios + "/${name}.py");
}
