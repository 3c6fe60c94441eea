"""The origins' own settings: how each origin is reached ([[origin]] in the config) and
the time bounds of every origin call ([timeouts]). ``musicfs.config`` parses the TOML
into these; the origins never import the config parser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The SFTP ``transport`` choices (sftp_transport.py says what each means).
SFTP_TRANSPORTS = ("asyncssh", "openssh")


@dataclass(frozen=True)
class OriginSettings:
    url: str
    name: str = ""
    # Lower is preferred; origins with equal priority keep their order in the file.
    priority: int = 0
    # SFTP
    key_file: Path | None = None
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False
    connections: int = 2  # SSH connections kept open to the server
    # OpenSSH client config: Host aliases, HostName, Port, User, IdentityFile, ProxyJump,
    # IdentitiesOnly (ssh_config.py). None: ~/.ssh/config if it exists.
    config_file: Path | None = None
    # How SSH connections are made (sftp_transport.py): "asyncssh" (in the daemon) or
    # "openssh" (an ssh process per connection, as sshfs runs).
    transport: str = "asyncssh"
    # S3
    endpoint: str | None = None  # host[:port] or http(s)://host[:port]; default AWS
    region: str | None = None
    secure: bool | None = None  # TLS; on unless turned off or the endpoint says http://
    credentials_file: Path | None = None  # AWS-style INI; default: environment variables
    profile: str = "default"
    ca_file: Path | None = None  # PEM bundle to trust for TLS; default: the system's CAs
    # A sequential read is served from one streaming GET (origins/s3_streams.py): at most
    # ``streams`` open at once (0: one ranged GET per read), opened once a run of
    # consecutive reads reaches ``stream_after`` bytes, closed after ``stream_idle`` unused.
    streams: int = 4
    stream_after: int = 1024 * 1024
    stream_idle: float = 10.0


@dataclass(frozen=True)
class OriginTimeouts:
    # One origin call (a read attempt, a stat, a listing page, a health check, a connect).
    operation: float = 5.0
    # Between health checks of a healthy origin; a failing one is re-checked with
    # exponential backoff from this up to health_max_backoff.
    health_interval: float = 10.0
    health_max_backoff: float = 60.0
    # A read an origin has not answered within this is also asked of the next origin
    # holding the track (a hedged read), and reads waiting on an origin just declared
    # unhealthy get this much longer before failing over.
    hedge_after: float = 1.0
