# A library on a NAS over SFTP (OpenSSH on a second VM), with the SSH key and known_hosts
# handed over as systemd credentials. Then the NAS goes away twice -- network cable pulled
# (packets silently dropped) and sshd killed -- and comes back: the tree keeps answering at
# once, cached tracks keep playing, uncached reads fail fast with EIO instead of hanging,
# and reads resume by themselves, without a restart or remount.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.libraryWithLongTracks;
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

  testScript = common.prelude + ''
    SECRETS = "${secrets}"
    DEADLINE = ${toString common.readDeadline}

    start_all()
    nas.wait_for_unit("sshd.service")
    nas.succeed(
        "mkdir -p /srv/music",
        "cp -r --no-preserve=mode,ownership ${library}/. /srv/music/",
        "chown -R music:users /srv/music",
    )
    expected = sums(nas, "/srv/music")

    with subtest("key and host key as credentials; the daemon mounts the NAS"):
        client.wait_for_unit("multi-user.target")
        client.succeed(
            f"install -d -m 700 {SECRETS}",
            f"ssh-keygen -q -t ed25519 -N ''' -f {SECRETS}/id_ed25519",
        )
        public_key = client.succeed(f"cat {SECRETS}/id_ed25519.pub").strip()
        nas.succeed(
            "install -d -m 700 -o music -g users /home/music/.ssh",
            f"echo {shlex.quote(public_key)} > /home/music/.ssh/authorized_keys",
            "chown music:users /home/music/.ssh/authorized_keys",
            "chmod 600 /home/music/.ssh/authorized_keys",
        )
        host_key = nas.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub").strip()
        client.succeed(f"echo {shlex.quote('nas ' + host_key)} > {SECRETS}/known_hosts")
        # The same files work for plain ssh with strict host key checking.
        client.succeed(
            f"ssh -i {SECRETS}/id_ed25519 -o UserKnownHostsFile={SECRETS}/known_hosts"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes music@nas true"
        )
        client.succeed("systemctl start musicfs.service")
        client.wait_for_unit("musicfs.service")
        wait_for_tracks(client, len(expected))
        assert sums(client, MNT) == expected, "bytes through the mount differ from the NAS"

    album = play_an_album(client)
    long1, long2 = long_tracks(client)
    pid = main_pid(client)

    with subtest("cable pulled (packets dropped): cached plays, uncached fails fast"):
        nas.block()
        check_outage(client, album, long1, DEADLINE)

    with subtest("cable back: uncached reads resume without a remount"):
        nas.unblock()
        check_recovered(client, long1, expected, pid)

    with subtest("sshd killed mid-session: cached plays, uncached fails fast"):
        nas.succeed("systemctl stop sshd.service", "pkill -KILL -u music || true")
        check_outage(client, album, long2, DEADLINE)

    with subtest("sshd back: uncached reads resume without a remount"):
        nas.succeed("systemctl start sshd.service")
        check_recovered(client, long2, expected, pid)
  '';
}
