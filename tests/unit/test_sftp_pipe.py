"""Layer 1: asyncssh's SFTP client over a child's stdin/stdout (``sftp_pipe``), against
OpenSSH's own ``sftp-server`` run as that child -- the protocol end of the ``openssh``
transport without ssh or a network -- and how its end is told apart (ssh's 255)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncssh
import pytest

from musicfs.origins.sftp_pipe import PipeProcess, start_sftp_over


def _sftp_server() -> str:
    for candidate in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sftp-server")
    if found is None:
        pytest.fail("OpenSSH's sftp-server is not installed (scripts/setup-debian.sh test)")
    return found


def test_reads_stats_and_lists_over_the_pipe(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "a.flac").write_bytes(data)
    (tmp_path / "sub").mkdir()

    async def main() -> None:
        process = await PipeProcess.start([_sftp_server()])
        sftp = await start_sftp_over(process)
        async with sftp.open(str(tmp_path / "a.flac"), "rb") as f:
            # Larger than one SFTP request: asyncssh splits and pipelines it.
            assert await f.read(len(data), 0) == data
            assert await f.read(100, len(data) - 10) == data[-10:]
        assert (await sftp.stat(str(tmp_path / "a.flac"))).size == len(data)
        names = sorted(n.filename for n in await sftp.readdir(str(tmp_path)))
        assert names == [".", "..", "a.flac", "sub"]
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.stat(str(tmp_path / "missing"))
        sftp.exit()  # EOF on its stdin: the server exits, the session ends cleanly
        await asyncio.wait_for(sftp.wait_closed(), 10)
        assert process.exited() and process.returncode == 0

    asyncio.run(main())


@pytest.mark.parametrize(("status", "raised"), [(255, "lost"), (0, "ended")])
def test_the_end_of_the_stream_says_lost_or_ended_by_exit_status(
    tmp_path: Path, status: int, raised: str
) -> None:
    """A child that answers the SFTP handshake, then exits with ``status``: 255 (ssh's
    own failure) fails pending requests as a lost connection, anything else as an ended
    session (which the pool retries on a fresh connection)."""
    script = tmp_path / "server.sh"
    # A real sftp-server under a shell that outlives it and then exits with the status
    # (stdin passed through fd 3: sh gives a background job /dev/null otherwise).
    script.write_text(
        f"#!/bin/sh\nexec 3<&0\n{_sftp_server()} <&3 3<&- &\nwait $!\n"
        f'echo "gone: test" >&2\nexit {status}\n'
    )
    script.chmod(0o755)
    reasons: list[str] = []

    async def main() -> None:
        process = await PipeProcess.start([str(script)])
        sftp = await start_sftp_over(process)
        process.on_exit(reasons.append)
        for pid in _children(process.proc.pid):
            os.kill(pid, 9)  # the sftp-server dies under the wrapper
        expected = asyncssh.ConnectionLost if raised == "lost" else asyncssh.SFTPConnectionLost
        with pytest.raises(expected):
            await asyncio.wait_for(sftp.stat(str(tmp_path)), 10)
        await asyncio.wait_for(process.wait(), 10)

    asyncio.run(main())
    assert reasons == ["gone: test"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_child_that_exits_at_once_is_a_failure_told_by_what_it_printed() -> None:
    # ssh that cannot resolve the host exits before the first request: its pipes may be
    # closed by the time they are tuned, which must not turn into a ValueError.
    argv = ["sh", "-c", "echo 'ssh: Could not resolve hostname nas' >&2; exec 1>&-; exit 255"]

    async def main() -> None:
        for _ in range(40):
            process = await PipeProcess.start(argv)
            await asyncio.sleep(0)  # let the loop see the pipes close
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(start_sftp_over(process), 5)
            assert not isinstance(info.value, ValueError)
            await process.wait()
            assert process.exit_reason() == "ssh: Could not resolve hostname nas"

    asyncio.run(main())
