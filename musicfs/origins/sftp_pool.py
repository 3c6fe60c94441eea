"""An SFTP origin's connections (asyncio side): a few ``Session``s shared round-robin,
each with a few open file handles.

A lost connection is re-established on demand -- in the background while another one
serves, with exponential backoff after failures -- and a call that finds its pooled SFTP
session already ended is retried once on a fresh connection, inside the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncssh

from musicfs.backoff import backoff_delay
from musicfs.failpoints import asyncio_fail_point, fail_point
from musicfs.origins.base import OriginError
from musicfs.origins.sftp_errors import SESSION_ENDED, ErrorReporter
from musicfs.origins.sftp_transport import Session, Transport
from musicfs.origins.ssh_config import SSHEndpoint

log = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_FILES_PER_CONNECTION = 16


@dataclass
class Slot:
    """One connection (``conn``) with its SFTP session and a few open file handles."""

    index: int
    conn: Session | None = None
    files: OrderedDict[str, asyncssh.SFTPClientFile] = field(default_factory=OrderedDict)
    connecting: asyncio.Lock | None = None

    @property
    def sftp(self) -> asyncssh.SFTPClient | None:
        return self.conn.sftp if self.conn is not None else None

    @property
    def tunnels(self) -> Sequence[object]:
        return self.conn.tunnels if self.conn is not None else ()

    def alive(self) -> bool:
        # is_closed() as well: a connection can die while nobody is watching the slot
        # (see ConnectionPool.connect), and a dead one must never be handed out.
        return self.conn is not None and not self.conn.is_closed()

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        self.files.clear()
        if conn is not None:
            conn.abort()


class ConnectionPool:
    def __init__(
        self,
        size: int,
        transport: Transport,
        errors: ErrorReporter,
        resolve: Callable[[], SSHEndpoint],
    ):
        self.slots = [Slot(i) for i in range(size)]
        self.transport = transport
        self.errors = errors
        self.resolve = resolve  # where the host is, worked out again at every connect
        self.timeout = errors.timeout
        self._next_slot = 0
        self._connect_failures = 0
        self._retry_at = 0.0
        self._last_connect_error: OriginError | None = None
        self._background: set[asyncio.Future[None]] = set()

    def _in_background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, slot: Slot) -> None:
        session: Session | None = None
        try:
            fail_point("origin.sftp.connect")
            endpoint = self.errors.endpoint = self.resolve()

            def lost(dead: Session, why: str) -> None:
                self._lost(slot, dead, why)

            session = await self.transport.connect(endpoint, lost)
            await asyncio_fail_point("origin.sftp.connected")
            if session.is_closed():
                # The server went away after the handshake, before this coroutine ran
                # again: the lost callback found no slot to clear then, so the connection
                # must not be handed out now.
                raise self.errors.err(
                    errno.ECONNRESET,
                    f"connection to {self.errors.where()} closed while it was being set up",
                )
        except BaseException as exc:
            if session is not None:
                session.abort()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            raise self.errors.connect_error(exc) from None
        slot.conn = session
        slot.files.clear()
        log.info(
            "sftp: origin=%s connected to %s (connection %d, %s)",
            self.errors.origin,
            self.errors.where(),
            slot.index,
            self.transport.name,
        )

    def _lost(self, slot: Slot, dead: Session, why: str) -> None:
        if slot.conn is not dead:
            return  # dropped on purpose, or the slot already holds a newer connection
        log.warning("sftp: origin=%s connection %d lost: %s", self.errors.origin, slot.index, why)
        slot.drop()

    async def session(self, *, force: bool = False) -> Slot:
        """A connected slot, round-robin. A dead slot is reconnected in the background
        while another connection serves; with none alive the caller waits for a connect.
        Reconnects back off exponentially after failures (``force`` -- used by health
        checks, which the monitor already backs off -- ignores that)."""
        slot = self.slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self.slots)
        if slot.alive():
            return slot
        alive = next((s for s in self.slots if s.alive()), None)
        if alive is not None:
            if not self._backing_off() and (
                slot.connecting is None or not slot.connecting.locked()
            ):
                self._in_background(self._quiet_connect(slot))
            return alive
        if not force and self._backing_off():
            last = self._last_connect_error
            wait = self._retry_at - asyncio.get_running_loop().time()
            raise self.errors.err(
                last.errno if last is not None and last.errno else errno.ECONNREFUSED,
                f"not reconnecting to {self.errors.where()} for another {wait:.1f}s (last "
                f"error: {last.strerror if last is not None else '?'})",
                origin_wide=last.origin_wide if last is not None else False,
            )
        await self._reconnect(slot)
        return slot

    def _backing_off(self) -> bool:
        return bool(self._connect_failures) and (asyncio.get_running_loop().time() < self._retry_at)

    async def _reconnect(self, slot: Slot) -> None:
        if slot.connecting is None:
            slot.connecting = asyncio.Lock()
        async with slot.connecting:
            if slot.alive():
                return
            try:
                await self.connect(slot)
            except OriginError as exc:
                self._connect_failures += 1
                self._last_connect_error = exc
                self._retry_at = asyncio.get_running_loop().time() + backoff_delay(
                    self._connect_failures, 0.5, 30.0
                )
                log.warning("sftp: %s", exc)
                raise
            self._connect_failures = 0
            self._last_connect_error = None

    async def _quiet_connect(self, slot: Slot) -> None:
        with contextlib.suppress(OriginError):  # logged and backed off by _reconnect
            await self._reconnect(slot)

    # -- using a connection ------------------------------------------------------------

    def failed(self, exc: BaseException, path: str | None, slot: Slot) -> OriginError:
        """``exc`` as the caller's error; a connection in doubt is dropped."""
        error, in_doubt = self.errors.request_error(exc, path)
        if in_doubt:
            slot.drop()
        return error

    async def run(
        self,
        path: str | None,
        op: Callable[[Slot], Awaitable[T]],
        *,
        force: bool = False,
        drop_on_cancel: bool = False,
    ) -> T:
        """Run ``op`` on a pooled connection within the operation timeout. A pooled SFTP
        session that has ended -- found closed when ``op`` used it (its connection died
        unseen), or ended by the server's SFTP subsystem exiting while the SSH connection
        stayed up -- says nothing about the server: the slot is dropped and ``op``
        retried once on a fresh connection, inside the same deadline. A lost SSH
        connection is an outage and is reported at once."""
        slot = await self.session(force=force)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        retried = False
        while True:
            try:
                return await asyncio.wait_for(op(slot), deadline - loop.time())
            except asyncio.CancelledError:
                if drop_on_cancel:
                    slot.drop()
                raise
            except Exception as exc:
                if retried or not isinstance(exc, SESSION_ENDED):
                    raise self.failed(exc, path, slot) from None
                log.info(
                    "sftp: origin=%s path=%r: connection %d was already closed (%s); "
                    "retrying on a fresh one",
                    self.errors.origin,
                    path or "",
                    slot.index,
                    exc.reason,
                )
                slot.drop()
            retried = True
            try:
                slot = await asyncio.wait_for(self.session(force=force), deadline - loop.time())
            except TimeoutError:
                raise self.errors.err(
                    errno.ETIMEDOUT, f"no answer within {self.timeout:g}s", path
                ) from None

    async def open_file(self, slot: Slot, full: str) -> asyncssh.SFTPClientFile:
        """``full`` opened for reading on ``slot``, reusing a handle it keeps open."""
        f = slot.files.get(full)
        if f is not None:
            slot.files.move_to_end(full)
            return f
        sftp = slot.sftp
        assert sftp is not None
        f = await sftp.open(full, "rb")
        slot.files[full] = f
        while len(slot.files) > OPEN_FILES_PER_CONNECTION:
            _, old = slot.files.popitem(last=False)
            self._in_background(_close_quietly(old))
        return f

    async def close(self) -> None:
        for slot in self.slots:
            conn = slot.conn
            slot.drop()
            if conn is not None:
                await conn.wait_closed()


async def _close_quietly(f: asyncssh.SFTPClientFile) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(f.close(), 5)
