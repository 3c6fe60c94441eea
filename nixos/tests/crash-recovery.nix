# Crash recovery under systemd: `kill -9` of the daemon while a player holds a file open
# -> Restart=on-failure brings it back, the old mount is detached lazily (it is busy), the
# new mount serves the same bytes and no stale "Transport endpoint is not connected" mount
# is left. A wedged daemon (every FUSE worker stuck) stops its watchdog pings and systemd
# restarts it. A stale mount left by a daemon systemd never knew about is cleaned up by
# the next start.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.demoLibrary;
in
{
  name = "musicfs-crash-recovery";

  nodes.machine = {
    imports = [ (common.musicfsNode { origins = [ { url = "${library}"; } ]; }) ];
    virtualisation.additionalPaths = [ library ];
    # Two FUSE workers: four stuck reads are enough to wedge the daemon.
    services.musicfs.settings.fuse.max_tasks = 2;
  };

  # tests/vm/scenarios/crash_recovery.py, which `make vm-test` also runs (Debian, as root).
  testScript =
    common.prelude
    + common.scenario "crash_recovery"
    + ''
      crash_recovery(
          machine,
          subtest,
          origin="${library}",
          daemon_user="musicfs",
          path="/run/wrappers/bin:/run/current-system/sw/bin",
      )
    '';
}
