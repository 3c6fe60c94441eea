"""Layer 3: the SFTP origin against Debian's OpenSSH sshd in a network namespace, and every
kind of bad input: each gives the right errno, a log line naming origin and path, no hang
-- with each transport (``openssh``: an ssh process per connection; ``asyncssh``)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from musicfs import failpoints
from musicfs.catalog.model import Source, Track
from musicfs.catalog.tags import Tags
from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.base import OriginError
from musicfs.origins.open import open_origin
from musicfs.origins.pool import OriginPool
from musicfs.origins.sftp import SFTPOrigin
from tests.support.netns import SSHServer
from tests.support.sftp_transports import current_transport, transport  # noqa: F401

T = TypeVar("T")
TIMEOUT = 1.5
BIG = bytes(range(256)) * (64 * 1024)  # 16 MiB


def library(root: Path) -> Path:
    lib = root / "lib"
    (lib / "artist" / "album").mkdir(parents=True)
    (lib / "artist" / "album" / "01.flac").write_bytes(BIG)
    (lib / "artist" / "album" / "02.flac").write_bytes(b"small")
    os.symlink("/etc", lib / "escape")
    os.symlink("album/02.flac", lib / "artist" / "link.flac")
    for p in [lib, *lib.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    return lib


def origin(server: SSHServer, root: Path, **overrides: Any) -> SFTPOrigin:
    url = overrides.pop("url", None) or server.url(root)
    settings = OriginSettings(
        url=url,
        name="nas",
        key_file=server.client_key,
        known_hosts=server.known_hosts,
        transport=current_transport(),
    )
    o = open_origin(url, "nas", replace(settings, **overrides), OriginTimeouts(operation=TIMEOUT))
    assert isinstance(o, SFTPOrigin)
    return o


def run(o: SFTPOrigin, fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await fn()
        finally:
            await o.aclose()

    return trio.run(main)


def fails(o: SFTPOrigin, fn: Callable[[], Awaitable[Any]], within: float) -> OriginError:
    """``fn`` must raise OriginError, and quickly."""

    async def main() -> OriginError:
        with pytest.raises(OriginError) as info:
            await fn()
        return info.value

    started = time.monotonic()
    exc = run(o, main)
    took = time.monotonic() - started
    assert took < within, f"took {took:.2f}s: {exc}"
    return exc


def test_list_stat_read_over_real_sftp(sshd: SSHServer, world_dir: Path) -> None:
    lib = library(world_dir)
    o = origin(sshd, lib)

    async def main() -> None:
        await o.check()
        listing = await o.list()
        paths = sorted(e.path for e in listing.entries)
        # The symlink inside the root is followed; the one escaping it is not.
        assert paths == ["artist/album/01.flac", "artist/album/02.flac", "artist/link.flac"]
        big = next(e for e in listing.entries if e.path == "artist/album/01.flac")
        assert big.size == len(BIG) and big.mtime_ns // 10**9 == int(
            (lib / "artist/album/01.flac").stat().st_mtime
        )
        assert (await o.stat("artist/album/02.flac")).size == 5
        assert (
            await o.read("artist/album/01.flac", 1_000_000, 3_000_000) == BIG[1_000_000:4_000_000]
        )
        assert await o.read("artist/album/01.flac", len(BIG) - 10, 100) == BIG[-10:]
        assert await o.read("artist/album/01.flac", len(BIG) + 10, 100) == b""
        # Concurrent reads are spread over the pooled connections.
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(o.read, "artist/album/01.flac", i * 1_000_000, 500_000)
        # (the second connection is opened in the background, without delaying reads)
        for _ in range(100):
            if sum(1 for s in o._slots if s.alive()) == 2:
                break
            await o.read("artist/album/02.flac", 0, 5)
            await trio.sleep(0.02)
        assert sum(1 for s in o._slots if s.alive()) == 2

    run(o, main)


def test_unknown_host_key_is_refused(sshd: SSHServer, world_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    sshd.known_hosts.write_text("")
    o = origin(sshd, library(world_dir))
    exc = fails(o, o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EACCES and exc.origin_wide
    assert "is not in" in str(exc) and "REFUSED" in str(exc)
    assert "origin=nas" in caplog.text and "REFUSED" in caplog.text
    assert sshd.known_hosts.read_text() == ""


def test_changed_host_key_is_refused_even_with_trust_on_first_use(
    sshd: SSHServer, world_dir: Path
) -> None:
    import subprocess

    other = world_dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    sshd.known_hosts.write_text(f"{sshd.ns.ip} {fake}\n")
    o = origin(sshd, library(world_dir), trust_on_first_use=True)
    exc = fails(o, o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EACCES and "does not match" in str(exc)
    assert "ssh-keygen -R" in str(exc)
    assert sshd.known_hosts.read_text() == f"{sshd.ns.ip} {fake}\n"  # not overwritten


def test_missing_known_hosts_file_is_refused(sshd: SSHServer, world_dir: Path) -> None:
    o = origin(sshd, library(world_dir), known_hosts=world_dir / "nope" / "known_hosts")
    exc = fails(o, o.check, within=2)
    assert exc.errno == errno.EACCES and "does not exist" in str(exc)
    assert "ssh-keyscan" in str(exc)


def test_trust_on_first_use_records_the_key_once(sshd: SSHServer, world_dir: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    known = world_dir / "fresh" / "known_hosts"
    lib = library(world_dir)
    o = origin(sshd, lib, known_hosts=known, trust_on_first_use=True)
    run(o, o.check)
    assert known.read_text() == f"{sshd.ns.ip} {sshd.public_host_key()}\n"
    assert "now trusted (trust_on_first_use)" in caplog.text
    # Second time the key is known: no new line, and the normal strict check passes.
    o = origin(sshd, lib, known_hosts=known)
    run(o, o.check)
    assert known.read_text().count("\n") == 1


def test_wrong_credentials(sshd: SSHServer, world_dir: Path) -> None:
    import subprocess

    wrong = world_dir / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    o = origin(sshd, library(world_dir), key_file=wrong)
    exc = fails(o, o.check, within=TIMEOUT + 2)
    assert exc.errno == errno.EACCES and exc.origin_wide
    assert "authentication to nobody@" in str(exc) and str(wrong) in str(exc)


def test_refused_connection(sshd: SSHServer, world_dir: Path) -> None:
    url = f"sftp://nobody@{sshd.ns.ip}:2222{world_dir}"
    o = origin(sshd, world_dir, url=url)
    exc = fails(o, o.check, within=1.0)
    assert exc.errno == errno.ECONNREFUSED and "refused" in str(exc)


def test_dns_failure(sshd: SSHServer, world_dir: Path) -> None:
    o = origin(sshd, world_dir, url="sftp://nobody@no-such-host.invalid/music")
    exc = fails(o, o.check, within=TIMEOUT + 2)
    assert exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT)


def test_unreachable_host_times_out_and_reads_back_off(sshd: SSHServer, world_dir: Path) -> None:
    sshd.ns.blackhole()
    o = origin(sshd, library(world_dir))

    async def main() -> None:
        started = trio.current_time()
        with pytest.raises(OriginError) as info:
            await o.read("artist/album/02.flac", 0, 5)
        assert info.value.errno == errno.ETIMEDOUT
        assert trio.current_time() - started < TIMEOUT + 1
        # Right after a failed connect, reads fail at once instead of reconnecting again.
        started = trio.current_time()
        with pytest.raises(OriginError) as info:
            await o.read("artist/album/02.flac", 0, 5)
        assert "not reconnecting" in str(info.value)
        assert trio.current_time() - started < 0.1

    run(o, main)


def test_permission_denied_on_a_file_and_a_folder(sshd: SSHServer, world_dir: Path) -> None:
    lib = library(world_dir)
    os.chmod(lib / "artist/album/02.flac", 0)
    (lib / "locked").mkdir()
    (lib / "locked" / "x.flac").write_bytes(b"x")
    os.chmod(lib / "locked", 0)
    o = origin(sshd, lib)

    async def main() -> None:
        with pytest.raises(OriginError) as info:
            await o.read("artist/album/02.flac", 0, 5)
        assert info.value.errno == errno.EACCES and info.value.path == "artist/album/02.flac"
        listing = await o.list()
        assert listing.gaps == ("locked",)
        await o.check()  # one unreadable file does not make the server unhealthy

    run(o, main)


def test_file_vanishes_or_shrinks_between_listing_and_read(
    sshd: SSHServer, world_dir: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    lib = library(world_dir)
    o = origin(sshd, lib)
    pool = OriginPool([o], read_deadline=5, operation_timeout=TIMEOUT)

    def track(path: str, size: int) -> Track:
        return Track(1, path, size, 0, None, Tags(), sources=(Source("nas", size, 0, None),))

    async def main() -> None:
        listing = await o.list()
        sizes = {e.path: e.size for e in listing.entries}
        (lib / "artist/album/02.flac").unlink()
        with open(lib / "artist/album/01.flac", "r+b") as f:
            f.truncate(1000)
        with pytest.raises(OriginError) as info:
            await pool.read(track("artist/album/02.flac", sizes["artist/album/02.flac"]), 0, 5)
        assert info.value.errno == errno.ENOENT
        with pytest.raises(OriginError) as info:
            await pool.read(track("artist/album/01.flac", len(BIG)), 0, 1_000_000)
        assert info.value.errno == errno.EIO
        assert "changed since the last sync" in str(info.value)

    run(o, main)
    assert "path='artist/album/02.flac'" in caplog.text and "origin=nas" in caplog.text


def test_server_stalls_mid_transfer(sshd: SSHServer, world_dir: Path) -> None:
    lib = library(world_dir)
    o = origin(sshd, lib)

    async def main() -> None:
        await o.read("artist/album/01.flac", 0, 10)  # connected
        # Freeze every server process: the kernel still ACKs, nothing answers.
        pids = sshd.ns.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = trio.current_time()
            with trio.move_on_after(TIMEOUT + 2) as scope:
                with pytest.raises(OriginError) as info:
                    await o.read("artist/album/01.flac", 0, len(BIG))
            assert not scope.cancelled_caught, "read hung past its operation timeout"
            assert info.value.errno == errno.ETIMEDOUT
            assert trio.current_time() - started < TIMEOUT + 1
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        # The stalled connection was dropped; a check reconnects and reads work again.
        await o.check()
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"

    run(o, main)


def test_kill_server_mid_read_then_restart(sshd: SSHServer, world_dir: Path) -> None:
    lib = library(world_dir)
    o = origin(sshd, lib)

    async def main() -> None:
        await o.check()
        errors: list[OriginError] = []

        async def big_read() -> None:
            try:
                await o.read("artist/album/01.flac", 0, len(BIG))
            except OriginError as exc:
                errors.append(exc)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(big_read)
            await trio.sleep(0.05)
            await trio.to_thread.run_sync(sshd.kill)
        assert trio.current_time() - started < TIMEOUT + 1
        assert errors and all(
            e.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT) for e in errors
        )
        with pytest.raises(OriginError):
            await o.check()
        await trio.to_thread.run_sync(sshd.start)
        await o.check()  # health checks reconnect at once, whatever the read backoff
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"

    run(o, main)


def _sftp_session_pids(server: SSHServer) -> list[int]:
    """The sshd children serving an SFTP subsystem (not the connections themselves)."""
    found = []
    for pid in server.ns.pids():
        with contextlib.suppress(OSError):
            if b"internal-sftp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_ended_sftp_session_under_a_live_connection_is_retried_on_a_fresh_one(
    sshd: SSHServer, world_dir: Path
) -> None:
    """The server's SFTP subsystem exits. Under asyncssh the SSH connection stays up and
    the pooled slot still looks connected; under openssh the ssh process ends with it
    and the slot is dropped. Either way the next read and check must succeed on a fresh
    connection (not report "Connection not open" -- the origin is fine)."""
    import asyncio

    o = origin(sshd, library(world_dir), connections=1)

    async def end_the_session() -> None:
        slot = o._slots[0]
        sftp = slot.sftp
        assert sftp is not None
        pids = _sftp_session_pids(sshd)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        # Wait for the actual condition: the client saw its SFTP channel close.
        await o._aio.call(lambda: asyncio.wait_for(sftp.wait_closed(), 30))
        if current_transport() == "asyncssh":
            assert slot.alive(), "the SSH connection should outlive its SFTP session"
        else:
            for _ in range(100):  # the ssh process's end is seen by its watcher
                if not slot.alive():
                    break
                await trio.sleep(0.02)
            assert not slot.alive(), "an ended ssh process must not stay pooled"

    async def main() -> None:
        await o.check()
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"  # a cached handle
        old_conn = o._slots[0].conn
        await end_the_session()
        started = trio.current_time()
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"
        assert trio.current_time() - started < TIMEOUT
        assert o._slots[0].conn is not old_conn
        # The same for a health check.
        await end_the_session()
        await o.check()

    run(o, main)


def test_connection_that_dies_while_being_set_up_is_never_handed_out(
    sshd: SSHServer, world_dir: Path
) -> None:
    """The race behind a flaky restart: a (background) connect finishes its handshake,
    the server dies before the connecting coroutine resumes, and the connection-lost
    callback finds no slot to clear. That dead connection must not become a pooled
    "alive" slot that fails every later call with "Connection not open"."""
    o = origin(sshd, library(world_dir), connections=1)
    # Holds the connect between the handshake and handing the slot out, with the loop
    # running (so the server's death is noticed meanwhile).
    failpoints.set("origin.sftp.connected", "1*sleep(3000)")

    async def main() -> None:
        errors: list[OriginError] = []

        async def first_check() -> None:
            with pytest.raises(OriginError) as info:
                await o.check()
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_check)
            while failpoints.hits("origin.sftp.connected") == 0:
                await trio.sleep(0.01)
            await trio.to_thread.run_sync(sshd.kill)
            assert not errors, "the kill must land while the connect is held"
        assert errors[0].errno == errno.ECONNRESET, errors[0]
        assert "while it was being set up" in str(errors[0])
        assert not o._slots[0].alive()
        await trio.to_thread.run_sync(sshd.start)
        await o.check()
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"

    run(o, main)


def test_cancelled_read_cancels_the_asyncio_side(sshd: SSHServer, world_dir: Path) -> None:
    o = origin(sshd, library(world_dir))

    async def main() -> None:
        await o.check()
        for pid in sshd.ns.pids():
            os.kill(pid, signal.SIGSTOP)
        try:
            with trio.move_on_after(0.3):
                await o.read("artist/album/01.flac", 0, 1000)
            loop = o._aio.loop

            async def pending() -> int:
                import asyncio

                await asyncio.sleep(0.05)
                me = asyncio.current_task()
                return sum(1 for t in asyncio.all_tasks() if t is not me and not t.done())

            # Only asyncssh's own connection tasks remain; our read task is gone.
            left = await o._aio.call(pending)
            assert loop.is_running() and left <= 2 * len(o._slots)
        finally:
            for pid in sshd.ns.pids():
                os.kill(pid, signal.SIGCONT)

    run(o, main)


def test_password_in_url_is_refused() -> None:
    from musicfs.config import ConfigError, settings_from_dict

    with pytest.raises(ConfigError) as info:
        settings_from_dict({"origin": [{"url": "sftp://me:hunter2@nas/music"}]})
    assert "must not contain a password" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_agent_auth_without_a_key_file(sshd: SSHServer, world_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    sock = world_dir / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, timeout=10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(world_dir))  # no ~/.ssh/id_* to fall back on
        o = origin(sshd, library(world_dir), key_file=None)
        assert run(o, lambda: o.read("artist/album/02.flac", 0, 5)) == b"small"
    finally:
        agent.terminate()
        agent.wait(10)


def test_failpoints_on_the_asyncio_side(sshd: SSHServer, world_dir: Path) -> None:
    """``origin.sftp.read=sleep`` hangs the asyncio thread itself: trio callers still get
    their answer on time, and ``error`` becomes an OriginError the pool can fail over."""
    from musicfs import failpoints

    o = origin(sshd, library(world_dir))
    pool = OriginPool([o], read_deadline=TIMEOUT, operation_timeout=TIMEOUT)
    track = Track(
        1, "artist/album/02.flac", 5, 0, None, Tags(), sources=(Source("nas", 5, 0, None),)
    )

    async def main() -> None:
        await o.check()
        failpoints.set("origin.sftp.read", "1*sleep(4000)")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.05)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = trio.current_time()
            with pytest.raises(OriginError):
                await pool.read(track, 0, 5)
            assert trio.current_time() - started < TIMEOUT + 0.5
            assert ticks >= 10  # the trio loop kept running meanwhile
            nursery.cancel_scope.cancel()
        failpoints.set("origin.sftp.read", "1*error(EIO)")
        with pytest.raises(OriginError) as info:
            await o.read("artist/album/02.flac", 0, 5)
        assert info.value.errno == errno.EIO
        # A background connect of the second connection may still be under way (started
        # by the reads above): the failpoint is for the next connect, not that one.
        for _ in range(250):
            if not any(s.connecting is not None and s.connecting.locked() for s in o._slots):
                break
            await trio.sleep(0.02)
        failpoints.set("origin.sftp.connect", "1*error(ENETUNREACH)")
        for slot in o._slots:
            slot.drop()
        with pytest.raises(OriginError) as info:
            await o.check()
        assert info.value.errno == errno.ENETUNREACH
        await o.check()
        assert await o.read("artist/album/02.flac", 0, 5) == b"small"

    run(o, main)
