# services.musicfs with a local origin: the unit starts as a notify service under its own
# user, every track of the demo library appears once with the origin's bytes, players (other
# users) can read, writes fail with EROFS, and stop/start unmounts and remounts cleanly.
{ self }:
{ pkgs, ... }:

let
  common = import ./common.nix { inherit self pkgs; };
  library = common.demoLibrary;
in
{
  name = "musicfs-basic";

  nodes.machine = {
    imports = [
      (common.musicfsNode {
        origins = [
          {
            url = "${library}";
            name = "demo";
          }
        ];
      })
    ];
    virtualisation.additionalPaths = [ library ];
  };

  testScript = common.prelude + ''
    ORIGIN = "${library}"

    machine.wait_for_unit("musicfs.service")
    expected = sums(machine, ORIGIN)
    assert len(expected) > 20, f"demo library too small: {len(expected)}"

    with subtest("a notify service, running as the musicfs user, holding a musicfs mount"):
        assert machine.succeed("systemctl show -P Type musicfs.service").strip() == "notify"
        user = machine.succeed(f"ps -o user= -p {main_pid(machine)}").strip()
        assert user == "musicfs", f"daemon runs as {user}"
        machine.succeed(f"findmnt -n -o FSTYPE,SOURCE {MNT} | grep -q musicfs")
        machine.succeed("test -d /var/lib/musicfs -a -d /var/cache/musicfs -a -d /run/musicfs")

    with subtest("every track appears once, with the origin's bytes"):
        wait_for_tracks(machine, len(expected))
        assert sums(machine, MNT) == expected, "bytes through the mount differ from the origin"

    with subtest("ls -R, stat and find work; another user (a player) can read"):
        machine.succeed(f"ls -lR {MNT} > /dev/null")
        machine.succeed(f"find {MNT} -exec stat {{}} + > /dev/null")
        machine.succeed(f"su -s /bin/sh nobody -c 'find {MNT} -type f -exec cat {{}} + > /dev/null'")

    with subtest("every write fails with EROFS"):
        track = machine.succeed(f"find {MNT} -type f -print -quit").strip()
        for command in [
            f"touch {MNT}/new-file",
            f"mkdir {MNT}/new-dir",
            f"echo x >> {shlex.quote(track)}",
            f"mv {shlex.quote(track)} {MNT}/renamed",
            f"find {MNT} -type f -exec rm {{}} +",
        ]:
            # The group's 2>&1: a failed redirection (>>) is reported by the shell itself,
            # and the driver captures stdout only.
            out = machine.fail(f"{{ {command}; }} 2>&1")
            assert "Read-only file system" in out, f"{command}: {out}"

    with subtest("reload (SIGHUP) re-reads the configuration without unmounting"):
        before = main_pid(machine)
        machine.succeed("systemctl reload musicfs.service")
        machine.sleep(2)
        assert main_pid(machine) == before, "reload restarted the daemon"
        machine.succeed("systemctl is-active musicfs.service")
        assert_mounted_once(machine)
        assert sums(machine, MNT) == expected

    with subtest("stop unmounts, start mounts the same tree again"):
        machine.succeed("systemctl stop musicfs.service")
        machine.fail(f"mountpoint -q {MNT}")
        machine.succeed("systemctl start musicfs.service")
        machine.wait_for_unit("musicfs.service")
        assert_mounted_once(machine)
        wait_for_tracks(machine, len(expected), timeout=60)
        assert sums(machine, MNT) == expected
  '';
}
