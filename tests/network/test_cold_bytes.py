"""Layer 3: what the cold path costs a NAS, in bytes its sshd sent (an nftables counter in
the server's namespace), against sshfs on the same sshd in the same test: MusicFS's own
first sync -- ``musicfs scan``'s and ``musicfs mount``'s -- moves little more (or less)
than a bare mutagen loop over sshfs; an ffprobe scan right
after it moves a fraction of what ffprobe over sshfs moves, a second scan nothing, and a
scan with the cache emptied no more than over sshfs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.peers import MusicFS, Sshfs, wait_for_tracks
from bench.workloads import scan
from tests.support.albums import make_scanner_library
from tests.support.netns import ByteCounter, SSHServer

pytestmark = pytest.mark.network

# SSH handshakes, listings and keepalives: the same few KiB whatever is read.
OVERHEAD = 96 * 1024


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sent(counter: ByteCounter, fn, *args) -> int:  # type: ignore[no-untyped-def]
    drop_page_cache()
    before = counter.bytes()
    fn(*args)
    return counter.bytes() - before


def mutagen_loop(files: list[Path]) -> None:
    code = "import sys, mutagen\nfor p in sys.argv[1:]:\n    mutagen.File(p)\n"
    subprocess.run([sys.executable, "-c", code, *map(str, files)], check=True, timeout=300)


def musicfs_scan(config: Path, state: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "musicfs",
            "scan",
            "--config",
            str(config),
            "--state-dir",
            str(state),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


# The kernel's read-ahead for the mount (/sys/class/bdi) and drop_caches are the host's.
@pytest.mark.host_root
def test_the_cold_path_costs_no_more_bytes_than_sshfs(
    sshd: SSHServer, world_dir: Path, tmp_path: Path
) -> None:
    lib = world_dir / "scanner-lib"
    files = make_scanner_library(lib, 2, 2, flac_seconds=24, mp3_seconds=60)
    rels = [p.relative_to(lib) for p in files]
    counter = ByteCounter(sshd.ns)
    origin = {
        "url": sshd.url(lib),
        "name": "nas",
        "key_file": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
    }

    with Sshfs(sshd, lib, tmp_path).mount(fresh=True) as theirs:
        over_sshfs = [theirs.path / rel for rel in rels]
        mutagen_bytes = sent(counter, mutagen_loop, over_sshfs)
        sshfs_scan = sent(counter, scan, over_sshfs)

    ours = MusicFS("musicfs", origin, tmp_path)
    # ``musicfs scan`` from a fresh state reads the tags straight from the origin.
    scanned = sent(counter, musicfs_scan, ours.config, tmp_path / "scan-state")
    before = counter.bytes()
    with ours.mount(fresh=True) as mounted:  # a first mount: the sync reads every tag
        ours_files = wait_for_tracks(mounted.path, len(files))
        time.sleep(0.5)  # its last batch is stored
        first_sync = counter.bytes() - before
        after_sync = sent(counter, scan, ours_files)
        second = sent(counter, scan, ours_files)
    with ours.mount(fresh=True) as mounted:  # the chunk cache emptied, the catalog kept
        cold_scan = sent(counter, scan, wait_for_tracks(mounted.path, len(files)))

    figures = dict(
        mutagen_over_sshfs=mutagen_bytes,
        musicfs_scan=scanned,
        first_sync=first_sync,
        sshfs_scan=sshfs_scan,
        scan_after_sync=after_sync,
        second_scan=second,
        cold_scan=cold_scan,
    )
    assert second <= OVERHEAD, figures
    # Measured 0.42x: each byte the parser reads fetched once, nothing at the end of a FLAC
    # (musicfs/origin_file.py, catalog/tags.py); issue 13's goal is 1.2x.
    assert scanned <= 0.6 * mutagen_bytes + OVERHEAD, figures
    assert cold_scan <= 1.2 * sshfs_scan + OVERHEAD, figures  # issue 13's goal
    # Measured 1.20x here, 1.19x in bench cold (1.31x before tag reads stopped fetching the
    # end of a FLAC, and of an MP3 whose ID3v2 tag leaves an ID3v1 tag nothing to add): the
    # head region ffprobe probes, fetched once, and little else.
    assert first_sync <= 1.2 * mutagen_bytes + OVERHEAD, figures  # issue 13's goal
    # Measured 0 bytes with the mount's kernel read-ahead at 64 KiB (0.08x at 16 KiB, 0.25x
    # at the kernel's 128 KiB: it read that far past the cached head region on every probe).
    assert after_sync <= 0.1 * sshfs_scan + OVERHEAD, figures  # issue 13's goal
