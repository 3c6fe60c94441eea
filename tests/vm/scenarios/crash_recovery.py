# Crash recovery under systemd with the shipped unit: `kill -9` of the daemon while a player
# holds a file open -> Restart=on-failure brings it back, the old (busy) mount is detached
# lazily, the new mount serves the same bytes, NRestarts counts it, no stale mount is left.
# A wedged daemon (every FUSE worker stuck on a failpoint) stops its watchdog pings and
# systemd kills and restarts it. A stale mount left by a daemon systemd never knew about is
# cleaned up by the next start. `machine` runs musicfs.service from boot on `origin`, with
# fuse.max_tasks = 2 and allow_other; `daemon_user` is the unit's User= (root without one),
# `path` the PATH a hand-started daemon needs (NixOS: the setuid fusermount3 wrapper first).


def crash_recovery(machine, subtest, origin: str, daemon_user: str, path: str) -> None:
    machine.wait_for_unit("musicfs.service")
    expected = sums(machine, origin)
    wait_for_tracks(machine, len(expected))

    with subtest("kill -9 with a player attached: restarted, remounted, same bytes"):
        before = main_pid(machine)
        held = machine.succeed(f"find {MNT} -type f -name '*.flac' -print -quit").strip()
        # A player with the file open across the crash keeps the old mount busy.
        machine.succeed(
            'systemd-run --unit=player "$(command -v sh)" -c \'exec 3< "$0"; exec sleep 600\''
            f" {shlex.quote(held)}"
        )
        machine.wait_until_succeeds("systemctl is-active player.service")
        machine.succeed("systemctl kill --signal=KILL musicfs.service")
        new_main_pid(machine, before, timeout=60)
        machine.wait_for_unit("musicfs.service")
        assert restarts(machine) >= 1, "systemd did not restart the daemon"
        assert_mounted_once(machine)
        wait_for_tracks(machine, len(expected), timeout=60)
        assert sums(machine, MNT) == expected, "bytes differ after the restart"
        machine.succeed("systemctl stop player.service")

    with subtest("a second crash in a row recovers the same way"):
        before = main_pid(machine)
        count = restarts(machine)
        machine.succeed("systemctl kill --signal=KILL musicfs.service")
        new_main_pid(machine, before, timeout=60)
        machine.wait_for_unit("musicfs.service")
        assert restarts(machine) == count + 1, "the second crash was not a restart"
        assert_mounted_once(machine)
        assert sums(machine, MNT) == expected

    with subtest("wedged (every worker stuck): no watchdog ping, systemd restarts it"):
        dropin = "/run/systemd/system/musicfs.service.d"
        machine.succeed(
            f"mkdir -p {dropin}",
            # Every read blocks for two minutes, deadline or not (a failpoint).
            "printf '[Service]\\nEnvironment=MUSICFS_FAILPOINTS=fuse.read=sleep(120000)\\n"
            f"WatchdogSec=6s\\n' > {dropin}/wedge.conf",
            "systemctl daemon-reload",
            "systemctl restart musicfs.service",
        )
        machine.wait_for_unit("musicfs.service")
        wait_for_tracks(machine, len(expected), timeout=60)
        before = main_pid(machine)
        count = restarts(machine)
        machine.succeed(
            f"find {MNT} -type f -print0 | head -z -n 4 | "
            "xargs -0 -I{} sh -c 'timeout 300 cat \"$1\" > /dev/null 2>&1 &' sh {}"
        )
        new_main_pid(machine, before, timeout=90)
        assert restarts(machine) > count, "the wedged daemon was not restarted by systemd"
        # Read whole, not `| grep -q`: under pipefail journalctl's SIGPIPE would fail it.
        assert "Watchdog timeout" in machine.succeed("journalctl -u musicfs.service")
        machine.succeed(
            f"rm {dropin}/wedge.conf",
            "systemctl daemon-reload",
            "systemctl restart musicfs.service",
        )
        machine.wait_for_unit("musicfs.service")
        assert_mounted_once(machine)
        wait_for_tracks(machine, len(expected), timeout=60)
        assert sums(machine, MNT) == expected

    with subtest("a stale mount from a daemon outside systemd is cleaned up by the next start"):
        machine.succeed("systemctl stop musicfs.service")
        machine.fail(f"mountpoint -q {MNT}")
        machine.succeed(
            f"systemd-run --unit=rogue --uid={daemon_user} --gid={daemon_user}"
            " --property=StateDirectory=musicfs-rogue --property=CacheDirectory=musicfs-rogue"
            f' --setenv=PATH={path} "$(command -v musicfs)" mount --origin {origin} {MNT}'
        )
        machine.wait_until_succeeds(f"findmnt -n {MNT}", timeout=60)
        machine.succeed("systemctl kill --signal=KILL rogue.service")
        # As the mount's owner: others are refused (EACCES) by a mount without allow_other
        # before the dead connection is noticed. Captured, not piped: under pipefail
        # `stat | grep` has stat's status.
        machine.wait_until_succeeds(
            f"out=$(runuser -u {daemon_user} -- stat {MNT} 2>&1 || true);"
            ' case "$out" in *"Transport endpoint is not connected"*) ;; *) exit 1 ;; esac'
        )
        machine.succeed("systemctl start musicfs.service")
        machine.wait_for_unit("musicfs.service")
        assert_mounted_once(machine)
        wait_for_tracks(machine, len(expected), timeout=60)
        assert sums(machine, MNT) == expected
