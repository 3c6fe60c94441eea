# The cache on a 16 MiB disk of its own, far smaller than the ~100 MiB library: every track
# read through the mount twice has the origin's bytes, and the service never restarts.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.libraryWithLongTracks 12;
in
{
  name = "musicfs-tiny-disk";

  nodes.machine = {
    imports = [ (common.musicfsNode { origins = [ { url = "${library}"; } ]; }) ];
    virtualisation.additionalPaths = [ library ];
    # /dev/vdb: formatted and mounted on the cache folder by the scenario.
    virtualisation.emptyDiskImages = [ 16 ];
    environment.systemPackages = [ pkgs.e2fsprogs ];
    # The disk, not the size limit, must run out; and no reserve larger than the disk.
    services.musicfs.settings.cache = {
      max_size = "1G";
      min_free = "1M";
    };
  };

  # tests/vm/scenarios/tiny_disk.py, which `make vm-test` also runs (a loop device there).
  testScript =
    common.prelude
    + common.scenario "tiny_disk"
    + ''
      tiny_disk(machine, subtest, origin="${library}", disk="/dev/vdb")
    '';
}
