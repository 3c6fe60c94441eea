"""An SSH server (a NAS) as an origin, over SFTP with asyncssh's SFTP client.

* ``sftp://user@host[:port]/path``; ``host`` may be a ``Host`` alias of the OpenSSH
  config (``config_file``, default ``~/.ssh/config``: ``ssh_config``). Key auth from
  ``key_file`` or, without one, the SSH agent and the default keys. Never a password.
* ``transport`` (``sftp_transport``): ``openssh`` runs each connection as an
  ``ssh -s host sftp`` process, as sshfs does, SSH's crypto outside the daemon;
  ``asyncssh`` (the default: measured no slower on two cores, see there) does SSH
  in the daemon.
* Host keys are checked against ``known_hosts`` (default ``~/.ssh/known_hosts``) with
  either transport. An unknown or changed key is refused with an error that says which;
  only ``trust_on_first_use = true`` lets an unknown host's key be recorded (a changed
  key is refused even then). ProxyJump hosts are verified the same way.
* The SFTP client runs on the origin's own asyncio loop in a dedicated thread
  (``aio_bridge``); trio callers are cancelled and cancel in both directions.
* A few connections (``connections``) share the load (``sftp_pool``); each has
  keepalives, a lost one is re-established on demand with exponential backoff, and one
  that stops answering a health check is torn down so the next call starts afresh. A
  call that finds its pooled SFTP session already ended retries once on a fresh
  connection. Errors: ``sftp_errors``; the listing walk: ``sftp_walk``.
"""

from __future__ import annotations

import asyncio
import errno
import stat as stat_mod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh
import trio

from musicfs.failpoints import fail_point
from musicfs.origins.aio_bridge import AsyncioThread, BridgeCancelled
from musicfs.origins.base import Listing, OriginEntry, OriginError
from musicfs.origins.settings import OriginSettings, OriginTimeouts
from musicfs.origins.sftp_asyncssh import AsyncsshTransport
from musicfs.origins.sftp_errors import ErrorReporter
from musicfs.origins.sftp_hostkeys import HostKeys
from musicfs.origins.sftp_openssh import OpenSSHTransport
from musicfs.origins.sftp_pool import ConnectionPool, Slot
from musicfs.origins.sftp_transport import Transport, chosen
from musicfs.origins.sftp_walk import entry, walk
from musicfs.origins.ssh_config import DEFAULT_PORT, SSHConfigError, SSHEndpoint
from musicfs.origins.ssh_config import resolve as resolve_endpoint
from musicfs.origins.urls import SFTPAddress

T = TypeVar("T")


class SFTPOrigin:
    def __init__(
        self,
        name: str,
        address: SFTPAddress,
        settings: OriginSettings,
        timeouts: OriginTimeouts,
    ):
        self._name = name
        self.address = address
        self.settings = settings
        self.timeout = timeouts.operation
        self.known_hosts = (
            settings.known_hosts or Path("~/.ssh/known_hosts").expanduser()
        ).expanduser()
        self._aio = AsyncioThread(f"sftp-{name}")
        # Where the URL's host really is (ssh_config.py): worked out again at every
        # connect, so an edited ~/.ssh/config applies without a restart.
        endpoint = SSHEndpoint(
            address.host,
            address.host,
            address.port or DEFAULT_PORT,
            address.user,
            address.host,
            (),
            (),
        )
        self.errors = ErrorReporter(
            name, endpoint, self.known_hosts, settings.key_file, self.timeout
        )
        self.host_keys = HostKeys(self.known_hosts, settings.trust_on_first_use, self.errors)
        self.transport = self._transport(chosen(settings.transport))
        self.pool = ConnectionPool(settings.connections, self.transport, self.errors, self._resolve)

    def _transport(self, name: str) -> Transport:
        if name == "openssh":
            return OpenSSHTransport(self.address, self.settings, self.timeout, self.host_keys)
        return AsyncsshTransport(self.settings, self.timeout, self.host_keys)

    # -- identity ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def display_url(self) -> str:
        a = self.address
        user = f"{a.user}@" if a.user else ""
        port = f":{a.port}" if a.port is not None else ""
        return f"sftp://{user}{a.host}{port}{a.path}"

    @property
    def endpoint(self) -> SSHEndpoint:
        return self.errors.endpoint

    @property
    def _slots(self) -> list[Slot]:
        return self.pool.slots

    def _where(self) -> str:
        return self.errors.where()

    def _full(self, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise self.errors.err(errno.EINVAL, "invalid path", path)
        root = self.address.path
        return f"{root.rstrip('/')}/{path}"

    def _resolve(self) -> SSHEndpoint:
        # Read at each connect like known_hosts is: a small local file.
        a = self.address
        try:
            return resolve_endpoint(a.host, a.user, a.port, self.settings.config_file)
        except SSHConfigError as exc:
            raise self.errors.err(errno.EINVAL, str(exc), origin_wide=True) from None

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an asyncio-side coroutine from trio."""

        async def run() -> T:
            return await fn()

        try:
            return await self._aio.call(run)
        except BridgeCancelled:
            raise self.errors.err(errno.EIO, "operation cancelled (origin closing)") from None

    # -- the origin protocol -----------------------------------------------------------

    async def read(self, path: str, offset: int, length: int) -> bytes:
        full = self._full(path)

        async def op(slot: Slot) -> bytes:
            fail_point("origin.sftp.read")  # runs on the asyncio thread: sleep() hangs it
            f = await self.pool.open_file(slot, full)
            try:
                data: bytes = await f.read(length, offset)
            except asyncssh.SFTPError:
                # A cached handle may be stale (file replaced): forget it.
                slot.files.pop(full, None)
                raise
            return data

        return await self._call(lambda: self.pool.run(path, op))

    async def stat(self, path: str) -> OriginEntry:
        full = self._full(path)

        async def op(slot: Slot) -> OriginEntry:
            assert slot.sftp is not None
            attrs = await slot.sftp.stat(full)
            if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR and not stat_mod.S_ISREG(
                attrs.permissions or 0
            ):
                raise self.errors.err(errno.EISDIR, "not a regular file", path)
            return entry(path, attrs)

        return await self._call(lambda: self.pool.run(path, op))

    async def check(self) -> None:
        root = self.address.path

        async def op(slot: Slot) -> None:
            assert slot.sftp is not None
            attrs = await slot.sftp.stat(root)
            if not stat_mod.S_ISDIR(attrs.permissions or 0) and (
                attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY
            ):
                raise self.errors.err(errno.ENOTDIR, f"{root} on the server is not a folder", "")

        # A healthy server answers a stat in milliseconds; one that did not answer in the
        # check's time (drop_on_cancel) has a dead connection: tear it down so the next
        # call reconnects instead of waiting on it.
        await self._call(lambda: self.pool.run("", op, force=True, drop_on_cancel=True))

    async def list(self) -> Listing:
        return await self._call(self._list)

    async def _list(self) -> Listing:
        slot = await self.pool.session()
        assert slot.sftp is not None
        try:
            return await walk(slot.sftp, self.address.path, self.timeout, self.errors)
        except (OriginError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise self.pool.failed(exc, "", slot) from None

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._aio.close, self.pool.close, abandon_on_cancel=True)
