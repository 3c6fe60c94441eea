"""asyncssh's SFTP client over a child process's stdin/stdout instead of an SSH channel.

asyncssh starts its SFTP client (``asyncssh.sftp.start_sftp_client``, the function behind
``SSHClientConnection.start_sftp_client``) on a reader and a writer; this module gives it
the child's pipes in their shape. What the client uses of them -- ``readexactly``,
``logger`` and ``get_extra_info`` of the reader; ``write``, ``write_eof``, ``close`` and
``channel.is_closing``/``wait_closed`` of the writer; ``create_task`` of the connection --
is all there is (asyncssh 2.24; ``tests/unit/test_sftp_pipe.py`` runs it against
OpenSSH's own ``sftp-server``).

When the child's stdout ends, the end is told apart the way ssh's exit status tells it:
255 is ssh's own failure (the connection was lost: ``asyncssh.ConnectionLost``, an outage),
anything else the SFTP session ending while the server is fine (EOF: asyncssh reports
``SFTPConnectionLost``, which the pool retries once on a fresh connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh
from asyncssh.logging import logger as ssh_logger
from asyncssh.sftp import start_sftp_client

log = logging.getLogger(__name__)

SSH_FAILED = 255  # ssh's exit status for its own errors (a lost connection among them)
# The pipe the child writes file data into: 1 MiB (Linux's default ceiling for
# unprivileged processes) instead of 64 KiB takes most of ssh's wake-ups per megabyte.
PIPE_SIZE = 1 << 20
STDERR_LINES = 40


class PipeProcess:
    """A child with its stdin/stdout as the SFTP stream; its stderr kept (last lines)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._exited = asyncio.Event()
        self._on_exit: Callable[[str], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher = asyncio.ensure_future(self._watch())

    @classmethod
    async def start(cls, argv: list[str]) -> PipeProcess:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=PIPE_SIZE,
            # Its own session: a Ctrl-C meant for the daemon is the daemon's to handle.
            start_new_session=True,
        )
        assert proc.stdout is not None
        # A larger pipe is an optimisation only. A child that has already exited (ssh
        # that could not resolve the host) may have had its pipe closed by now: fileno()
        # then raises ValueError, and the failure is told by what it printed, later.
        with contextlib.suppress(OSError, AttributeError, ValueError):
            pipe = proc.stdout._transport.get_extra_info("pipe")  # type: ignore[attr-defined]
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return cls(proc)

    async def _watch(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        try:
            with contextlib.suppress(Exception):
                while line := await stderr.readline():
                    self._stderr.append(line.decode(errors="replace").rstrip())
            await self.proc.wait()
        finally:
            # Also when the loop shuts down (this task cancelled): asyncio's transport for
            # the child kills it if need be, and must be closed while the loop runs --
            # asyncio.subprocess.Process has no close() of its own.
            transport = getattr(self.proc, "_transport", None)
            if transport is not None:
                transport.close()
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit(self.exit_reason())

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def exited(self) -> bool:
        return self.proc.returncode is not None

    def on_exit(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once the child has exited (at once if it has)."""
        self._on_exit = callback
        if self._exited.is_set():
            callback(self.exit_reason())

    def stderr_text(self) -> str:
        return "\n".join(self._stderr)

    def exit_reason(self) -> str:
        said = self.stderr_text().strip().splitlines()
        return said[-1] if said else f"ssh exited with status {self.proc.returncode}"

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def wait(self) -> None:
        await self._exited.wait()

    def create_task(
        self, coro: Coroutine[Any, Any, None], task_logger: Any = None
    ) -> asyncio.Task[None]:
        """What asyncssh's SFTP client asks its connection for (its receive loop): the
        task is held here, as asyncio itself keeps only a weak reference."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Channel:
    def __init__(self, process: PipeProcess):
        self.process = process
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing or self.process.exited()

    async def wait_closed(self) -> None:
        await self.process.wait()


class _Reader:
    def __init__(self, process: PipeProcess):
        assert process.proc.stdout is not None
        self.stream = process.proc.stdout
        self.process = process
        self.logger = ssh_logger

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self.stream.readexactly(n)
        except asyncio.IncompleteReadError:
            # Which end it was is known once ssh has exited (it closes stdout first).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 2)
            if self.process.returncode == SSH_FAILED:
                raise asyncssh.ConnectionLost(self.process.exit_reason()) from None
            raise

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Writer:
    def __init__(self, process: PipeProcess):
        assert process.proc.stdin is not None
        self.stream = process.proc.stdin
        self.channel = _Channel(process)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def write_eof(self) -> None:
        # The end of the SFTP session: ssh passes the EOF on, the server's side exits.
        self.stream.close()

    def close(self) -> None:
        self.channel.closing = True
        self.stream.close()


async def start_sftp_over(process: PipeProcess) -> asyncssh.SFTPClient:
    """An SFTP client (version 3, UTF-8 paths) on ``process``'s stdin/stdout."""
    client: asyncssh.SFTPClient = await start_sftp_client(
        process,  # type: ignore[arg-type]
        asyncio.get_running_loop(),
        "strict",
        _Reader(process),  # type: ignore[arg-type]
        _Writer(process),  # type: ignore[arg-type]
        "utf-8",
        "strict",
        3,
    )
    return client
