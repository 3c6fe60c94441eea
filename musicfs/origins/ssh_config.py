"""Where an ``sftp://`` URL's host really is, the way ``ssh`` works it out: OpenSSH client
config (``config_file``, default ``~/.ssh/config``) parsed by asyncssh's own parser.

``sftp://nas/music`` with ``Host nas`` in the config connects to its ``HostName`` and
``Port`` as its ``User``, through its ``ProxyJump`` hops; ``IdentityFile`` and
``IdentitiesOnly`` are applied by asyncssh itself when it is given the same config file
(``SSHEndpoint.config``). What the URL says wins over the config, as ``ssh user@host -p``
does. The host key is looked up under the name ssh would use: ``HostKeyAlias`` if set,
else the real host name and port.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.config import SSHClientConfig

DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_PORT = 22


class SSHConfigError(ValueError):
    """The config file cannot be read or parsed."""


@dataclass(frozen=True)
class Hop:
    """One ``ProxyJump`` host: ``[user@]host[:port]`` (host may be a config alias)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Hop:
        user, _, rest = text.rpartition("@")
        host, port = rest, None
        if rest.startswith("["):  # [v6::addr]:port
            inside, _, after = rest[1:].partition("]")
            host, port = inside, int(after[1:]) if after.startswith(":") else None
        elif rest.count(":") == 1:
            name, _, number = rest.partition(":")
            host, port = name, int(number)
        return cls(host, user or None, port)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}" + (
            f":{self.port}" if self.port else ""
        )


@dataclass(frozen=True)
class SSHEndpoint:
    alias: str  # the host as the URL names it
    host: str  # where to connect (HostName)
    port: int
    user: str | None
    key_name: str  # the name known_hosts lists the host key under
    jumps: tuple[Hop, ...]  # ProxyJump hops, the first one reached first
    config: tuple[Path, ...]  # the config files read (asyncssh applies the rest)

    def where(self) -> str:
        """``user@host:port`` for messages, with the alias when it is one."""
        user = f"{self.user}@" if self.user else ""
        real = f"{self.host}:{self.port}"
        shown = f"{user}{self.alias}" + (
            f" ({real})" if self.alias != self.host else f":{self.port}"
        )
        return shown + (f" via {', '.join(map(str, self.jumps))}" if self.jumps else "")


def config_paths(config_file: Path | None) -> tuple[Path, ...]:
    """The config file to read: an explicit one must exist; the default may be absent."""
    if config_file is not None:
        path = config_file.expanduser()
        if not path.is_file():
            raise SSHConfigError(f"SSH config file {path} does not exist")
        return (path,)
    default = Path(DEFAULT_CONFIG).expanduser()
    return (default,) if default.is_file() else ()


def resolve(
    alias: str, user: str | None, port: int | None, config_file: Path | None
) -> SSHEndpoint:
    """The endpoint ``ssh [-p port] [user@]alias`` would reach. Blocking (reads files)."""
    paths = config_paths(config_file)
    try:
        local_user = getpass.getuser()
    except (KeyError, OSError):
        local_user = "root"
    try:
        config = SSHClientConfig.load(
            None,
            list(paths),
            False,
            False,
            False,
            local_user,
            user if user else (),
            alias,
            port if port is not None else (),
        )
    except (asyncssh.ConfigParseError, OSError) as exc:
        where = ", ".join(map(str, paths))
        raise SSHConfigError(f"cannot use SSH config {where}: {exc}") from None
    host = str(config.get("Hostname", alias))
    real_port = int(str(config.get("Port", DEFAULT_PORT)))
    jump = config.get("ProxyJump")
    hops: tuple[Hop, ...] = ()
    if isinstance(jump, str) and jump.lower() != "none":
        try:
            hops = tuple(Hop.parse(part) for part in jump.split(",") if part)
        except ValueError:
            raise SSHConfigError(
                f"ProxyJump {jump!r} for {alias}: a port is not a number"
            ) from None
    configured_user = config.get("User")
    alias_key = config.get("HostKeyAlias")
    return SSHEndpoint(
        alias=alias,
        host=host,
        port=real_port,
        user=str(configured_user) if configured_user else None,
        key_name=str(alias_key) if alias_key else host,
        jumps=hops,
        config=paths,
    )
