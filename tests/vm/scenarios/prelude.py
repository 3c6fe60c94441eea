# Helpers every VM scenario starts with, against the NixOS test driver's machine API.
# Prepended to the scenario scripts both by nixos/tests/*.nix (nixos/tests/common.nix) and by
# tests/vm (the Debian machines' driver), so the same text runs in both places.
import shlex
import time

MNT = "/mnt/music"


# What the mount shows of an origin: its audio files (the demo library also has a text file).
AUDIO = " -o ".join(
    f"-iname '*.{ext}'" for ext in ("flac", "mp3", "ogg", "opus", "m4a", "wav", "aiff")
)


def sums(node, root: str, under_kib: int | None = None) -> list[str]:
    """Sorted SHA-256 of every audio file under root (smaller than ``under_kib`` KiB):
    compares a mount with its origin whatever the tag-based names are."""
    size = f" -size -{under_kib}k" if under_kib else ""
    out = node.succeed(
        f"find {shlex.quote(root)} -type f{size} \\( {AUDIO} \\) -print0"
        " | xargs -0 -r sha256sum | cut -d' ' -f1 | sort"
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


def long_tracks(node, count: int) -> list[str]:
    found = sorted(node.succeed(f"find {MNT} -type f -size +4M").splitlines())
    assert len(found) == count, f"long tracks: {found}"
    return found


def new_main_pid(node, before: str, timeout: int) -> None:
    """Wait until systemd runs a daemon other than ``before``."""
    node.wait_until_succeeds(
        "pid=$(systemctl show -P MainPID musicfs.service);"
        f' [ "$pid" != 0 ] && [ "$pid" != {before} ]',
        timeout=timeout,
    )


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


def check_recovered(
    node, uncached: str, expected: list[str], pid: str, *, last: bool = True
) -> None:
    """Origin back: the uncached read succeeds again with the origin's bytes, and it took
    neither a restart nor a remount. After the ``last`` outage every track is compared
    (before it, reading the other long tracks whole would cache them ahead of theirs)."""
    node.wait_until_succeeds(f"cat {shlex.quote(uncached)} > /dev/null", timeout=120)
    track = node.succeed(f"sha256sum {shlex.quote(uncached)} | cut -d' ' -f1").strip()
    assert track in expected, f"{uncached}: bytes differ after the outage"
    if last:
        assert sums(node, MNT) == expected, "bytes differ after the outage"
    assert main_pid(node) == pid and restarts(node) == 0, "the daemon was restarted"
    assert_mounted_once(node)
