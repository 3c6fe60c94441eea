# A library in a MinIO bucket on a second VM, with the access keys in an EnvironmentFile
# written at run time. The bucket serves the same bytes as the files uploaded; with MinIO
# stopped, cached tracks keep playing and uncached reads fail fast; started again, reads
# resume without a remount.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.libraryWithLongTracks 2;
  # Test-only keys of a throwaway MinIO; the daemon still gets them from a file written at
  # run time, the way real keys must reach it.
  accessKey = "musicfs-test";
  secretKey = "musicfs-test-secret";
in
{
  name = "musicfs-minio";

  nodes = {
    s3 = {
      virtualisation.additionalPaths = [ library ];
      services.minio = {
        enable = true;
        # nixpkgs marks MinIO insecure since upstream archived it (nixpkgs#491337); here
        # it is a throwaway fixture inside the test network.
        package = pkgs.minio.overrideAttrs (old: {
          meta = old.meta // {
            knownVulnerabilities = [ ];
          };
        });
        rootCredentialsFile = pkgs.writeText "minio-credentials" ''
          MINIO_ROOT_USER=${accessKey}
          MINIO_ROOT_PASSWORD=${secretKey}
        '';
      };
      environment.systemPackages = [ pkgs.minio-client ];
      networking.firewall.allowedTCPPorts = [ 9000 ];
    };

    client = {
      imports = [
        (common.musicfsNode {
          manualStart = true; # once the environment file exists
          outageTuning = true;
          origins = [
            {
              url = "s3://music/library";
              name = "bucket";
              endpoint = "s3:9000";
              region = "us-east-1";
              secure = false;
            }
          ];
        })
      ];
      services.musicfs.environmentFile = "/var/lib/musicfs-secrets/s3.env";
    };
  };

  testScript = common.prelude + ''
    DEADLINE = ${toString common.readDeadline}

    start_all()
    s3.wait_for_unit("minio.service")
    s3.wait_for_open_port(9000)
    # The MinIO client, with the alias given in its environment (no config file needed).
    MC = "HOME=/root MC_HOST_local=http://${accessKey}:${secretKey}@localhost:9000 mc"
    s3.succeed(
        f"{MC} mb local/music",
        f"{MC} cp --recursive ${library}/ local/music/library/",
    )
    expected = sums(s3, "${library}")
    listed = s3.succeed(f"{MC} ls --recursive local/music/library/ | wc -l").strip()
    assert int(listed) == len(expected), f"bucket holds {listed} objects, expected {len(expected)}"

    with subtest("keys from an EnvironmentFile; the daemon mounts the bucket"):
        client.wait_for_unit("multi-user.target")
        client.succeed(
            "install -d -m 700 /var/lib/musicfs-secrets",
            "printf '%s\\n' AWS_ACCESS_KEY_ID=${accessKey} AWS_SECRET_ACCESS_KEY=${secretKey}"
            " > /var/lib/musicfs-secrets/s3.env",
            "chmod 600 /var/lib/musicfs-secrets/s3.env",
        )
        client.succeed("systemctl start musicfs.service")
        client.wait_for_unit("musicfs.service")
        wait_for_tracks(client, len(expected))
        # Not the long tracks yet: read whole, they would be cached before the outage.
        short = sums(s3, "${library}", under_kib=1024)
        assert sums(client, MNT, under_kib=1024) == short, "bytes differ from the bucket"
        # The keys are in the daemon's environment only, not in its command line or config.
        client.fail("systemctl cat musicfs.service | grep -q ${secretKey}")
        client.fail("grep -q ${secretKey} /etc/musicfs/config.toml")

    album = play_an_album(client)
    long_track = long_tracks(client, 2)[0]
    pid = main_pid(client)

    with subtest("MinIO stopped: the tree answers, cached plays, uncached fails fast"):
        s3.succeed("systemctl stop minio.service")
        check_outage(client, album, long_track, DEADLINE)

    with subtest("MinIO back: uncached reads resume without a remount"):
        s3.succeed("systemctl start minio.service")
        s3.wait_for_open_port(9000)
        check_recovered(client, long_track, expected, pid)
  '';
}
