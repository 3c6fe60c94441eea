"""The ``asyncssh`` transport: SSH itself in asyncssh, on the origin's asyncio thread.

The host's block of the OpenSSH config (``SSHEndpoint.config``) is applied by asyncssh;
ProxyJump hops are connected one through the other, each verified against the same
known_hosts and never trusted on first use. Keepalives declare a silent peer dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncssh

from musicfs.origins.settings import OriginSettings
from musicfs.origins.sftp_errors import Cause, ConnectFailure, classify
from musicfs.origins.sftp_hostkeys import HostKeys
from musicfs.origins.sftp_transport import LostCallback
from musicfs.origins.ssh_config import SSHEndpoint

log = logging.getLogger(__name__)

# Ciphers in the order offered to the server (all of asyncssh's defaults, AEAD AES first):
# asyncssh runs chacha20-poly1305 as several Python-level cipher calls per packet,
# AES-GCM as one, which decides cold throughput.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


class AsyncsshSession:
    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        sftp: asyncssh.SFTPClient,
        tunnels: list[asyncssh.SSHClientConnection],
    ):
        self.conn = conn
        self._sftp = sftp
        self._tunnels = tunnels

    @property
    def sftp(self) -> asyncssh.SFTPClient:
        return self._sftp

    @property
    def tunnels(self) -> Sequence[object]:
        return self._tunnels

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())

    def abort(self) -> None:
        self.conn.abort()
        for tunnel in reversed(self._tunnels):
            tunnel.abort()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()


class _Client(asyncssh.SSHClient):  # type: ignore[misc]
    """Decides on host keys the known_hosts file does not list, and reports a lost link."""

    def __init__(self, host_known: bool, trust_on_first_use: bool, on_lost: LostCallback):
        self.host_known = host_known
        self.trust_on_first_use = trust_on_first_use
        self.on_lost = on_lost
        self.verdict: Cause | None = None
        self.new_key: asyncssh.SSHKey | None = None
        self.session: AsyncsshSession | None = None  # set once handed out

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self.host_known:
            self.verdict = Cause.HOST_KEY_CHANGED
            return False
        if self.trust_on_first_use:
            self.new_key = key
            return True
        self.verdict = Cause.HOST_KEY_UNKNOWN
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.on_lost(self.session, str(exc or "closed by the server"))


class AsyncsshTransport:
    name = "asyncssh"

    def __init__(self, settings: OriginSettings, timeout: float, host_keys: HostKeys):
        self.settings = settings
        self.timeout = timeout
        self.host_keys = host_keys

    def options(self, endpoint: SSHEndpoint) -> dict[str, Any]:
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
            "encryption_algs": list(PREFERRED_CIPHERS),
        }
        if endpoint.user:
            options["username"] = endpoint.user
        if self.settings.key_file is not None:
            options["client_keys"] = [str(self.settings.key_file.expanduser())]
            options["agent_path"] = None
        return options

    async def connect(self, endpoint: SSHEndpoint, on_lost: LostCallback) -> AsyncsshSession:
        # Inline, as every small local file here: this loop is the origin's own thread.
        known, host_known = self.host_keys.load(endpoint)
        tunnels: list[asyncssh.SSHClientConnection] = []
        client: _Client | None = None
        conn: asyncssh.SSHClientConnection | None = None
        try:
            tunnel = await self._open_jumps(endpoint, known, tunnels)

            def factory() -> _Client:
                nonlocal client
                client = _Client(host_known, self.settings.trust_on_first_use, on_lost)
                return client

            conn = await asyncio.wait_for(
                asyncssh.connect(
                    endpoint.alias,
                    known_hosts=known,
                    client_factory=factory,
                    tunnel=tunnel if tunnel is not None else (),
                    **self.options(endpoint),
                ),
                self.timeout,
            )
            sftp = await asyncio.wait_for(conn.start_sftp_client(), self.timeout)
            assert client is not None
            if client.new_key is not None:
                await asyncio.to_thread(self.host_keys.record, endpoint, client.new_key)
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            for t in reversed(tunnels):
                t.abort()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, asyncssh.HostKeyNotVerifiable):
                verdict = client.verdict if client is not None else None
                raise ConnectFailure(verdict or Cause.HOST_KEY_UNKNOWN, str(exc)) from None
            raise
        session = AsyncsshSession(conn, sftp, tunnels)
        client.session = session
        return session

    async def _open_jumps(
        self,
        endpoint: SSHEndpoint,
        known: asyncssh.SSHKnownHosts,
        tunnels: list[asyncssh.SSHClientConnection],
    ) -> asyncssh.SSHClientConnection | None:
        """Connect through the ProxyJump hops, each verified against the same known_hosts
        (never trusted on first use); the last one, to tunnel through, or None."""
        tunnel: asyncssh.SSHClientConnection | None = None
        for hop in endpoint.jumps:
            options = self.options(endpoint)
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
                if isinstance(exc, asyncssh.HostKeyNotVerifiable):
                    failure = ConnectFailure(Cause.HOST_KEY_UNKNOWN, str(exc))
                else:
                    failure = classify(exc)
                failure.hop = hop
                raise failure from None
            tunnels.append(tunnel)
        return tunnel
