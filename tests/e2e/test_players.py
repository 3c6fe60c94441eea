"""End to end: the clients people point at a music folder, pointed at a MusicFS mount of a
local origin. A scanner (ffprobe) sees what it sees on the origin, a decoder (ffmpeg)
gets the same samples, mpv plays an album with seeks to the end of every track, mpd
indexes and plays from the mount, beets imports it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.albums import decode, probe
from tests.support.players import Mpd, Mpv, beet, beet_command, require_clients

Mount = tuple[Path, dict[Path, Path]]


def test_ffprobe_and_decoded_audio_equal_the_origin(local_mount: Mount) -> None:
    require_clients("ffmpeg", "ffprobe")
    _, tracks = local_mount
    for mounted, origin in tracks.items():
        assert probe(mounted) == probe(origin), mounted
        ours, theirs = decode(mounted), decode(origin)
        assert ours.returncode == 0 and not ours.stderr, (mounted, ours.stderr)
        assert ours.md5 == theirs.md5 and len(ours.md5) == 32, mounted


def test_mpv_plays_an_album_with_seeks_to_the_end(local_mount: Mount, tmp_path: Path) -> None:
    require_clients("mpv", "ffprobe")
    _, tracks = local_mount
    album = sorted(m for m in tracks if "First Light" in str(m.parent))
    assert len(album) == 6
    with Mpv(tmp_path) as mpv:
        for track in album:
            expected = float(str(probe(tracks[track])["duration"]))
            mpv.command("loadfile", str(track))
            mpv.wait_event("file-loaded", timeout=20)
            duration = mpv.command("get_property", "duration")
            assert abs(duration - expected) < 0.1, (track, duration, expected)
            for percent in (50, 95):
                mpv.command("seek", percent, "absolute-percent")
                # The load's own playback-restart may still be queued, so the position is
                # polled until the seek has landed rather than read after the next event.
                target = expected * percent / 100
                deadline = time.monotonic() + 20
                position = None
                while position is None or abs(position - target) >= 0.5:
                    assert time.monotonic() < deadline, (track, percent, position)
                    time.sleep(0.05)
                    position = mpv.command("get_property", "time-pos")
            mpv.command("set_property", "pause", False)
            ended = mpv.wait_event("end-file", timeout=30)
            assert ended["reason"] == "eof", (track, ended, mpv.log()[-2000:])
            mpv.command("set_property", "pause", True)
            mpv.drop_events()


def test_mpd_indexes_plays_and_seeks_from_the_mount(local_mount: Mount, tmp_path: Path) -> None:
    require_clients("mpd", "mpc")
    mnt, tracks = local_mount
    with Mpd(tmp_path, mnt) as mpd:
        mpd.mpc("update", "--wait", timeout=60)
        listed = mpd.mpc("listall").splitlines()
        assert sorted(listed) == sorted(str(m.relative_to(mnt)) for m in tracks), mpd.log()
        mpd.mpc("add", "/")
        mpd.mpc("play")
        status = mpd.wait_status(r"\[playing\] #1/12 +0:0[1-9]", timeout=20)
        mpd.mpc("seek", "50%")
        # A 5 s track: 50 % is 0:02, past where it was playing before the seek.
        mpd.wait_status(r"\[playing\] #1/12 +0:0[2-4]/0:05", timeout=10)
        assert "ERROR" not in status, status
        mpd.mpc("next")
        mpd.wait_status(r"\[playing\] #2/12", timeout=10)


def test_beets_imports_every_track_from_the_mount(local_mount: Mount, tmp_path: Path) -> None:
    require_clients(beet_command())
    mnt, tracks = local_mount
    imported = beet(tmp_path, "import", "-A", "-q", str(mnt))
    assert imported.returncode == 0, imported.stderr
    listed = beet(tmp_path, "ls", "-f", "$path|$album|$title|$length")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("|") for line in listed.stdout.splitlines()]
    assert sorted(Path(r[0]) for r in rows) == sorted(tracks), listed.stdout
    for path, album, title, _length in rows:
        assert album in ("First Light", "Long Hours") and title.startswith(album), (path, title)
