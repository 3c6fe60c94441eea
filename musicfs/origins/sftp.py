"""An SSH server (a NAS) as an origin, over SFTP with asyncssh.

* ``sftp://user@host[:port]/path``; key auth from ``key_file`` or, without one, the SSH
  agent and the default keys. Never a password.
* Host keys are checked against ``known_hosts`` (default ``~/.ssh/known_hosts``). An
  unknown or changed key is refused with an error that says which; only
  ``trust_on_first_use = true`` lets an unknown host's key be recorded (a changed key is
  refused even then).
* asyncssh runs on the origin's own asyncio loop in a dedicated thread
  (``aio_bridge``); trio callers are cancelled and cancel in both directions.
* A few connections (``connections``) share the load; each has keepalives, a lost one is
  re-established on demand with exponential backoff, and one that stops answering a
  health check is torn down so the next call starts afresh. A call that finds its
  pooled SFTP session already ended retries once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat as stat_mod
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import trio

from musicfs.backoff import backoff_delay
from musicfs.failpoints import asyncio_fail_point, fail_point
from musicfs.origins.aio_bridge import AsyncioThread, BridgeCancelled
from musicfs.origins.base import Listing, OriginEntry, OriginError
from musicfs.origins.settings import OriginSettings, OriginTimeouts
from musicfs.origins.ssh_config import DEFAULT_PORT, Hop, SSHConfigError, SSHEndpoint
from musicfs.origins.ssh_config import resolve as resolve_endpoint
from musicfs.origins.urls import SFTPAddress

log = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_FILES_PER_CONNECTION = 16
# Ciphers in the order offered to the server (all of asyncssh's defaults, AEAD AES first).
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
LIST_PARALLEL = 8
# What asyncssh raises when a request meets an SFTP session that has ended: already
# closed (the request was never sent), or closed by the server's end of the channel while
# the SSH connection itself stayed up. (A lost connection raises ConnectionLost instead.)
_SESSION_ENDED = (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)


@dataclass
class _Slot:
    """One SSH connection with its SFTP session and a few open file handles."""

    index: int
    conn: asyncssh.SSHClientConnection | None = None
    sftp: asyncssh.SFTPClient | None = None
    files: OrderedDict[str, asyncssh.SFTPClientFile] = field(default_factory=OrderedDict)
    connecting: asyncio.Lock | None = None
    # ProxyJump connections the SSH connection runs through, the first hop first.
    tunnels: list[asyncssh.SSHClientConnection] = field(default_factory=list)

    def alive(self) -> bool:
        # is_closed() as well: a connection can die while nobody is watching the slot
        # (see _connect), and a dead one must never be handed out.
        return self.conn is not None and self.sftp is not None and not self.conn.is_closed()

    def drop(self) -> None:
        conn, self.conn, self.sftp = self.conn, None, None
        self.files.clear()
        if conn is not None:
            conn.abort()
        self.drop_tunnels()

    def drop_tunnels(self) -> None:
        tunnels, self.tunnels = self.tunnels, []
        for tunnel in reversed(tunnels):
            tunnel.abort()


class _HostKeyCheck(asyncssh.SSHClient):  # type: ignore[misc]
    """Decides on host keys the known_hosts file does not list, and notices lost links."""

    def __init__(self, origin: SFTPOrigin, slot: _Slot, host_known: bool):
        self.origin = origin
        self.slot = slot
        self.host_known = host_known
        self.verdict: str | None = None
        self.new_key: asyncssh.SSHKey | None = None
        self.conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self.host_known:
            self.verdict = "changed"
            return False
        if self.origin.settings.trust_on_first_use:
            self.new_key = key
            self.verdict = "trusted-on-first-use"
            return True
        self.verdict = "unknown"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot.conn is None or self.slot.conn is not self.conn:
            return  # dropped on purpose, or the slot already holds a newer connection
        log.warning(
            "sftp: origin=%s connection %d lost: %s",
            self.origin.name,
            self.slot.index,
            exc or "closed by the server",
        )
        self.slot.conn, self.slot.sftp = None, None
        self.slot.files.clear()
        self.slot.drop_tunnels()


def _known_hosts_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


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
        # Where the URL's host really is (ssh_config.py): worked out again at every connect,
        # so an edited ~/.ssh/config applies without a restart.
        self.endpoint = SSHEndpoint(
            address.host,
            address.host,
            address.port or DEFAULT_PORT,
            address.user,
            address.host,
            (),
            (),
        )
        self._slots = [_Slot(i) for i in range(settings.connections)]
        self._next_slot = 0
        self._connect_failures = 0
        self._retry_at = 0.0
        self._last_connect_error: OriginError | None = None
        self._background: set[asyncio.Future[None]] = set()

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

    def _where(self) -> str:
        return self.endpoint.where()

    def _err(
        self, err: int, message: str, path: str | None = None, *, origin_wide: bool = False
    ) -> OriginError:
        return OriginError(err, message, origin=self._name, path=path, origin_wide=origin_wide)

    def _full(self, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise self._err(errno.EINVAL, "invalid path", path)
        root = self.address.path
        return f"{root.rstrip('/')}/{path}"

    # -- connections (asyncio side) ----------------------------------------------------

    def _connect_options(self, endpoint: SSHEndpoint) -> dict[str, Any]:
        options: dict[str, Any] = {
            "port": endpoint.port,
            # The same config file ssh would read (never asyncssh's own default): it
            # applies IdentityFile, IdentitiesOnly and the rest of the host's block.
            "config": list(endpoint.config),
            "connect_timeout": self.timeout,
            "login_timeout": self.timeout,
            # A silent peer is declared dead after ~2 intervals without an answer.
            "keepalive_interval": max(1.0, self.timeout),
            "keepalive_count_max": 2,
            "preferred_auth": "publickey",
            "password": None,
            "kbdint_auth": False,
            # AES-GCM first: asyncssh runs chacha20-poly1305 as several Python-level
            # cipher calls per packet, AES-GCM as one, which decides cold throughput.
            "encryption_algs": list(PREFERRED_CIPHERS),
        }
        if endpoint.user:
            options["username"] = endpoint.user
        if self.settings.key_file is not None:
            options["client_keys"] = [str(self.settings.key_file.expanduser())]
            options["agent_path"] = None
        return options

    def _load_known_hosts(self, endpoint: SSHEndpoint) -> tuple[asyncssh.SSHKnownHosts, bool]:
        """The known_hosts file and whether it lists this host at all."""
        path = self.known_hosts
        try:
            text = path.read_text()
        except FileNotFoundError:
            if not self.settings.trust_on_first_use:
                raise self._err(
                    errno.EACCES,
                    f"known_hosts file {path} does not exist, so the host key of "
                    f"{self._where()} cannot be verified; add it (ssh-keyscan -p "
                    f"{endpoint.port} {endpoint.host} >> {path}) or set "
                    "trust_on_first_use = true",
                    origin_wide=True,
                ) from None
            text = ""
        except OSError as exc:
            raise self._err(
                errno.EACCES, f"cannot read known_hosts file {path}: {exc}", origin_wide=True
            ) from None
        known = asyncssh.import_known_hosts(text)
        keys = known.match(endpoint.key_name, "", endpoint.port)
        return known, bool(keys[0] or keys[1])

    def _save_host_key(self, key: asyncssh.SSHKey) -> None:
        line = key.export_public_key("openssh").decode().split()[:2]
        pattern = _known_hosts_pattern(self.endpoint.key_name, self.endpoint.port)
        entry = f"{pattern} {' '.join(line)}"
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (entry + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning(
            "sftp: origin=%s: host key %s of %s was not known and is now trusted "
            "(trust_on_first_use); recorded in %s",
            self._name,
            key.get_fingerprint(),
            self._where(),
            self.known_hosts,
        )

    def _connect_error(
        self, exc: BaseException, check: _HostKeyCheck | None, hop: Hop | None = None
    ) -> OriginError:
        where = self._where() if hop is None else f"jump host {hop} (ProxyJump of {self._where()})"
        if isinstance(exc, OriginError):
            return exc
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            verdict = check.verdict if check is not None else None
            if verdict == "changed":
                msg = (
                    f"host key of {where} does not match the one in {self.known_hosts}: "
                    "REFUSED (the server was reinstalled, or someone is intercepting the "
                    "connection; if the change is expected, remove the old line with "
                    "ssh-keygen -R "
                    f"{_known_hosts_pattern(self.endpoint.key_name, self.endpoint.port)}"
                    f" -f {self.known_hosts})"
                )
            else:
                msg = (
                    f"host key of {where} is not in {self.known_hosts}: REFUSED (add it with "
                    f"ssh-keyscan, or set trust_on_first_use = true to accept it once)"
                )
            return self._err(errno.EACCES, msg, origin_wide=True)
        if isinstance(exc, asyncssh.PermissionDenied):
            how = (
                f"key {self.settings.key_file}"
                if self.settings.key_file and hop is None
                else f"the IdentityFile of {self.endpoint.config[0]} / SSH agent / default keys"
                if self.endpoint.config
                else "SSH agent / default keys"
            )
            return self._err(
                errno.EACCES,
                f"authentication to {where} failed with {how}",
                origin_wide=True,
            )
        if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
            return self._err(
                errno.EINVAL,
                f"cannot use key file {self.settings.key_file}: {exc} (encrypted keys need "
                "an SSH agent)",
                origin_wide=True,
            )
        if isinstance(exc, socket.gaierror):
            return self._err(
                errno.EHOSTUNREACH,
                f"cannot resolve host {hop.host if hop else self.endpoint.host!r}: {exc.strerror}",
            )
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return self._err(errno.ETIMEDOUT, f"no answer from {where} within {self.timeout:g}s")
        if isinstance(exc, ConnectionRefusedError):
            return self._err(errno.ECONNREFUSED, f"connection to {where} refused")
        if isinstance(exc, ConnectionError):
            # EPIPE / ECONNABORTED / ECONNRESET: the server dropped the connection while
            # it was being set up (it is going down) -- to a caller, a reset connection.
            return self._err(
                errno.ECONNRESET, f"connection to {where} dropped during set-up: {exc.strerror}"
            )
        if isinstance(exc, OSError) and exc.errno:
            return self._err(exc.errno, f"cannot connect to {where}: {exc.strerror or exc}")
        if isinstance(exc, asyncssh.Error):
            return self._err(errno.ECONNRESET, f"SSH connection to {where} failed: {exc}")
        return self._err(errno.EIO, f"cannot connect to {where}: {exc!r}")

    async def _connect(self, slot: _Slot) -> None:
        check: _HostKeyCheck | None = None
        conn: asyncssh.SSHClientConnection | None = None
        try:
            fail_point("origin.sftp.connect")
            self.endpoint = self._resolve()
            known, host_known = self._load_known_hosts(self.endpoint)
            tunnel = await self._open_jumps(slot, known)

            def factory() -> _HostKeyCheck:
                nonlocal check
                check = _HostKeyCheck(self, slot, host_known)
                return check

            conn = await asyncio.wait_for(
                asyncssh.connect(
                    self.endpoint.alias,
                    known_hosts=known,
                    client_factory=factory,
                    tunnel=tunnel if tunnel is not None else (),
                    **self._connect_options(self.endpoint),
                ),
                self.timeout,
            )
            sftp = await asyncio.wait_for(conn.start_sftp_client(), self.timeout)
            await asyncio_fail_point("origin.sftp.connected")
            if check is not None and check.new_key is not None:
                await asyncio.to_thread(self._save_host_key, check.new_key)
            if conn.is_closed():
                # The server went away after the handshake, before this coroutine ran
                # again: connection_lost found no slot to clear then, so the connection
                # must not be handed out now.
                raise self._err(
                    errno.ECONNRESET,
                    f"connection to {self._where()} closed while it was being set up",
                )
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            slot.drop_tunnels()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            raise self._connect_error(exc, check) from None
        slot.conn, slot.sftp = conn, sftp
        slot.files.clear()
        log.info(
            "sftp: origin=%s connected to %s (connection %d)", self._name, self._where(), slot.index
        )

    def _resolve(self) -> SSHEndpoint:
        # Read here like known_hosts is: a small local file, once per connection.
        a = self.address
        try:
            return resolve_endpoint(a.host, a.user, a.port, self.settings.config_file)
        except SSHConfigError as exc:
            raise self._err(errno.EINVAL, str(exc), origin_wide=True) from None

    async def _open_jumps(
        self, slot: _Slot, known: asyncssh.SSHKnownHosts
    ) -> asyncssh.SSHClientConnection | None:
        """Connect through the ProxyJump hops, each verified against the same known_hosts
        (never trusted on first use); the last one, to tunnel through, or None."""
        slot.drop_tunnels()
        tunnel: asyncssh.SSHClientConnection | None = None
        for hop in self.endpoint.jumps:
            options = self._connect_options(self.endpoint)
            for key in ("port", "username", "client_keys", "agent_path"):
                options.pop(key, None)  # the hop's own, from its config block or defaults
            try:
                tunnel = await asyncio.wait_for(
                    asyncssh.connect(
                        hop.host,
                        hop.port if hop.port is not None else (),
                        username=hop.user if hop.user else (),
                        known_hosts=known,
                        tunnel=tunnel if tunnel is not None else (),
                        **options,
                    ),
                    self.timeout,
                )
            except Exception as exc:
                raise self._connect_error(exc, None, hop) from None
            slot.tunnels.append(tunnel)
        return tunnel

    async def _session(self, *, force: bool = False) -> _Slot:
        """A connected slot, round-robin. A dead slot is reconnected in the background
        while another connection serves; with none alive the caller waits for a connect.
        Reconnects back off exponentially after failures (``force`` -- used by health
        checks, which the monitor already backs off -- ignores that)."""
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        if slot.alive():
            return slot
        alive = next((s for s in self._slots if s.alive()), None)
        if alive is not None:
            if not self._backing_off() and (
                slot.connecting is None or not slot.connecting.locked()
            ):
                task = asyncio.ensure_future(self._quiet_connect(slot))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return alive
        if not force and self._backing_off():
            last = self._last_connect_error
            wait = self._retry_at - asyncio.get_running_loop().time()
            raise self._err(
                last.errno if last is not None and last.errno else errno.ECONNREFUSED,
                f"not reconnecting to {self._where()} for another {wait:.1f}s (last error: "
                f"{last.strerror if last is not None else '?'})",
                origin_wide=last.origin_wide if last is not None else False,
            )
        await self._reconnect(slot)
        return slot

    def _backing_off(self) -> bool:
        return bool(self._connect_failures) and (asyncio.get_running_loop().time() < self._retry_at)

    async def _reconnect(self, slot: _Slot) -> None:
        if slot.connecting is None:
            slot.connecting = asyncio.Lock()
        async with slot.connecting:
            if slot.alive():
                return
            try:
                await self._connect(slot)
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

    async def _quiet_connect(self, slot: _Slot) -> None:
        with contextlib.suppress(OriginError):  # logged and backed off by _reconnect
            await self._reconnect(slot)

    def _sftp_error(self, exc: BaseException, path: str | None, slot: _Slot) -> OriginError:
        if isinstance(exc, OriginError):
            return exc
        if isinstance(exc, asyncssh.SFTPConnectionLost):
            slot.drop()
            return self._err(errno.ECONNRESET, f"connection lost: {exc.reason}", path)
        if isinstance(exc, asyncssh.SFTPNoConnection):
            slot.drop()
            return self._err(errno.ECONNRESET, f"connection already closed: {exc.reason}", path)
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            return self._err(errno.ENOENT, "no such file on the server", path)
        if isinstance(exc, asyncssh.SFTPPermissionDenied):
            return self._err(errno.EACCES, "permission denied by the server", path)
        if isinstance(exc, asyncssh.SFTPError):
            return self._err(errno.EIO, f"server error: {exc.reason}", path)
        # Anything else means the connection is in doubt: drop it, reconnect next time.
        slot.drop()
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return self._err(errno.ETIMEDOUT, f"no answer within {self.timeout:g}s", path)
        if isinstance(exc, asyncssh.ConnectionLost | asyncssh.DisconnectError | ConnectionError):
            return self._err(errno.ECONNRESET, f"connection lost: {exc}", path)
        if isinstance(exc, OSError) and exc.errno:
            return self._err(exc.errno, str(exc), path)
        return self._err(errno.EIO, f"unexpected: {exc!r}", path)

    async def _with_session(
        self,
        path: str | None,
        op: Callable[[_Slot], Awaitable[T]],
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
        slot = await self._session(force=force)
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
                if retried or not isinstance(exc, _SESSION_ENDED):
                    raise self._sftp_error(exc, path, slot) from None
                log.info(
                    "sftp: origin=%s path=%r: connection %d was already closed (%s); "
                    "retrying on a fresh one",
                    self._name,
                    path or "",
                    slot.index,
                    exc.reason,
                )
                slot.drop()
            retried = True
            try:
                slot = await asyncio.wait_for(self._session(force=force), deadline - loop.time())
            except TimeoutError:
                raise self._err(
                    errno.ETIMEDOUT, f"no answer within {self.timeout:g}s", path
                ) from None

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an asyncio-side coroutine from trio."""

        async def run() -> T:
            return await fn()

        try:
            return await self._aio.call(run)
        except BridgeCancelled:
            raise self._err(errno.EIO, "operation cancelled (origin closing)") from None

    # -- the origin protocol -----------------------------------------------------------

    async def read(self, path: str, offset: int, length: int) -> bytes:
        full = self._full(path)

        async def op(slot: _Slot) -> bytes:
            assert slot.sftp is not None
            fail_point("origin.sftp.read")  # runs on the asyncio thread: sleep() hangs it
            f = slot.files.get(full)
            if f is None:
                f = await slot.sftp.open(full, "rb")
                slot.files[full] = f
                while len(slot.files) > OPEN_FILES_PER_CONNECTION:
                    _, old = slot.files.popitem(last=False)
                    closing = asyncio.ensure_future(_close_quietly(old))
                    self._background.add(closing)
                    closing.add_done_callback(self._background.discard)
            else:
                slot.files.move_to_end(full)
            try:
                data: bytes = await f.read(length, offset)
            except asyncssh.SFTPError:
                # A cached handle may be stale (file replaced): forget it.
                slot.files.pop(full, None)
                raise
            return data

        return await self._call(lambda: self._with_session(path, op))

    def _entry(self, path: str, attrs: asyncssh.SFTPAttrs) -> OriginEntry:
        mtime_ns = attrs.mtime_ns
        if mtime_ns is None:
            mtime_ns = int(attrs.mtime or 0) * 1_000_000_000
        return OriginEntry(path, int(attrs.size or 0), int(mtime_ns))

    async def stat(self, path: str) -> OriginEntry:
        full = self._full(path)

        async def op(slot: _Slot) -> OriginEntry:
            assert slot.sftp is not None
            attrs = await slot.sftp.stat(full)
            if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR and not stat_mod.S_ISREG(
                attrs.permissions or 0
            ):
                raise self._err(errno.EISDIR, "not a regular file", path)
            return self._entry(path, attrs)

        return await self._call(lambda: self._with_session(path, op))

    async def check(self) -> None:
        root = self.address.path

        async def op(slot: _Slot) -> None:
            assert slot.sftp is not None
            attrs = await slot.sftp.stat(root)
            if not stat_mod.S_ISDIR(attrs.permissions or 0) and (
                attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY
            ):
                raise self._err(errno.ENOTDIR, f"{root} on the server is not a folder", "")

        # A healthy server answers a stat in milliseconds; one that did not answer in the
        # check's time (drop_on_cancel) has a dead connection: tear it down so the next
        # call reconnects instead of waiting on it.
        await self._call(lambda: self._with_session("", op, force=True, drop_on_cancel=True))

    async def list(self) -> Listing:
        return await self._call(self._list)

    async def _list(self) -> Listing:
        slot = await self._session()
        sftp = slot.sftp
        assert sftp is not None
        root = self.address.path
        page_timeout = self.timeout * 3
        try:
            real_root = await asyncio.wait_for(sftp.realpath(root), self.timeout)
            root_attrs = await asyncio.wait_for(sftp.stat(root), self.timeout)
        except Exception as exc:
            raise self._sftp_error(exc, "", slot) from None
        if not stat_mod.S_ISDIR(root_attrs.permissions or 0):
            raise self._err(errno.ENOTDIR, f"{root} on the server is not a folder", "")
        entries: list[OriginEntry] = []
        gaps: list[str] = []
        limit = asyncio.Semaphore(LIST_PARALLEL)
        started = time.monotonic()

        def inside(real: str) -> bool:
            return real == real_root or real.startswith(real_root.rstrip("/") + "/")

        async def walk(rel: str) -> None:
            full = f"{root.rstrip('/')}/{rel}" if rel else root
            try:
                async with limit:
                    names = await asyncio.wait_for(sftp.readdir(full), page_timeout)
            except (asyncssh.SFTPPermissionDenied, asyncssh.SFTPNoSuchFile) as exc:
                if not rel:
                    raise self._sftp_error(exc, "", slot) from None
                log.warning(
                    "sftp: origin=%s path=%r: cannot read folder, its tracks are kept as they "
                    "were (%s)",
                    self._name,
                    rel,
                    exc.reason,
                )
                gaps.append(rel)
                return
            subdirs = []
            for item in names:
                name = item.filename
                if isinstance(name, bytes):
                    name = os.fsdecode(name)
                if name in (".", ".."):
                    continue
                child = f"{rel}/{name}" if rel else name
                attrs = item.attrs
                mode = attrs.permissions or 0
                if stat_mod.S_ISLNK(mode) or attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                    target = f"{full.rstrip('/')}/{name}"
                    try:
                        async with limit:
                            real = await asyncio.wait_for(sftp.realpath(target), self.timeout)
                            attrs = await asyncio.wait_for(sftp.stat(target), self.timeout)
                    except asyncssh.SFTPError as exc:
                        log.warning(
                            "sftp: origin=%s path=%r: broken symlink skipped (%s)",
                            self._name,
                            child,
                            exc.reason,
                        )
                        continue
                    if not inside(real):
                        log.warning(
                            "sftp: origin=%s path=%r: symlink escapes the origin root, skipped",
                            self._name,
                            child,
                        )
                        continue
                    mode = attrs.permissions or 0
                if stat_mod.S_ISDIR(mode):
                    subdirs.append(child)
                elif stat_mod.S_ISREG(mode):
                    entries.append(self._entry(child, attrs))
            await asyncio.gather(*(walk(d) for d in subdirs))

        try:
            await walk("")
        except OriginError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._sftp_error(exc, "", slot) from None
        log.debug(
            "sftp: origin=%s listed %d files in %.1fs",
            self._name,
            len(entries),
            time.monotonic() - started,
        )
        return Listing(entries, tuple(sorted(gaps)))

    async def aclose(self) -> None:
        async def cleanup() -> None:
            for slot in self._slots:
                conn = slot.conn
                slot.drop()
                if conn is not None:
                    await conn.wait_closed()

        await trio.to_thread.run_sync(self._aio.close, cleanup, abandon_on_cancel=True)


async def _close_quietly(f: asyncssh.SFTPClientFile) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(f.close(), 5)
