# A library on a NAS over SFTP (OpenSSH on a second VM), with the SSH key and known_hosts
# handed over as systemd credentials. Then the NAS goes away three times -- network cable
# pulled (packets silently dropped), sshd stopped, the VM crashed -- and comes back: the
# tree keeps answering at once, cached tracks keep playing, uncached reads fail fast with
# EIO instead of hanging, and reads resume by themselves, without a restart or remount.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.libraryWithLongTracks 3;
  secrets = "/var/lib/musicfs-secrets";
  credentials = "/run/credentials/musicfs.service";
in
{
  name = "musicfs-sftp-outage";

  nodes = {
    nas = {
      virtualisation.additionalPaths = [ library ];
      services.openssh.enable = true;
      users.users.music.isNormalUser = true;
    };

    client = {
      imports = [
        (common.musicfsNode {
          manualStart = true; # once the key exists
          outageTuning = true;
          origins = [
            {
              url = "sftp://music@nas/srv/music";
              name = "nas";
              key_file = "${credentials}/nas-key";
              known_hosts = "${credentials}/known-hosts";
            }
          ];
        })
      ];
      environment.systemPackages = [ pkgs.openssh ];
      # Created by the test script at run time: secrets never enter the Nix store.
      services.musicfs.credentials = {
        nas-key = "${secrets}/id_ed25519";
        known-hosts = "${secrets}/known_hosts";
      };
    };
  };

  # tests/vm/scenarios/sftp_outage.py, which `make vm-test` also runs (Debian machines).
  testScript =
    common.prelude
    + common.scenario "sftp_outage"
    + ''
      sftp_outage(
          client,
          nas,
          subtest,
          library="${library}",
          secrets="${secrets}",
          deadline=${toString common.readDeadline},
      )
    '';
}
