"""The settings of the Prometheus endpoint (``musicfs/service/metrics.py``), apart from it
so that reading a config does not import prometheus-client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "host:port", or "port" for loopback; "" = no endpoint

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        return (host.strip("[]") if sep else LOOPBACK) or LOOPBACK, int(port)


def parse_listen(value: Any) -> str:
    """``"127.0.0.1:9101"``, ``"[::1]:9101"``, ``"9101"`` (loopback) or ``""`` (off)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string like '127.0.0.1:9101', got {value!r}")
    if not value:
        return value
    _, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port or a port number 1-65535, got {value!r}")
    return value
