# The cache on a real block device far smaller than the library: the daemon is stopped, the
# cache folder becomes a fresh ext4 file system on `disk`, and with the daemon started
# again every track is read through the mount twice. Every byte is right, and the service
# never restarts: a full cache disk is a reason to evict or to serve uncached, not to die.
# `machine` runs musicfs.service from boot on `origin`, with cache.max_size far above the
# disk (the disk, not the limit, runs out) and a small cache.min_free.


def tiny_disk(machine, subtest, origin: str, disk: str) -> None:
    cache = "/var/cache/musicfs"
    machine.wait_for_unit("musicfs.service")
    expected = sums(machine, origin)

    with subtest("the cache folder on a disk far smaller than the library"):
        machine.succeed(
            "systemctl stop musicfs.service",
            f"mkfs.ext4 -q -F -m 0 {disk}",
            f"rm -rf {cache} && mkdir -p {cache}",
            f"mount {disk} {cache}",
            # Root's 0700 folder would be the one entry a non-root daemon cannot read.
            f"rmdir {cache}/lost+found",
        )
        disk_bytes = int(machine.succeed(f"df -B1 --output=size {cache} | tail -n 1").strip())
        library_bytes = int(machine.succeed(f"du -sb {shlex.quote(origin)} | cut -f1").strip())
        assert library_bytes > 4 * disk_bytes, f"library {library_bytes} B, disk {disk_bytes} B"
        machine.succeed("systemctl start musicfs.service")
        machine.wait_for_unit("musicfs.service")
        wait_for_tracks(machine, len(expected))
        pid, count = main_pid(machine), restarts(machine)

    with subtest("every track read through the mount, twice: every byte right"):
        for _ in range(2):
            assert sums(machine, MNT) == expected, "bytes through the mount differ"
        used = int(machine.succeed(f"df -B1 --output=used {cache} | tail -n 1").strip())
        assert used > disk_bytes // 2, f"the cache disk was hardly used ({used} B)"

    with subtest("the service never restarted and still serves"):
        assert main_pid(machine) == pid and restarts(machine) == count, "the daemon restarted"
        machine.succeed("systemctl is-active musicfs.service")
        assert_mounted_once(machine)
