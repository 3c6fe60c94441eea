"""The sd_notify datagram protocol over ``$NOTIFY_SOCKET``, without an external package.

systemd (``Type=notify``) learns from these messages when the mount is ready
(``READY=1``), what the daemon is doing (``STATUS=...``), that it is stopping
(``STOPPING=1``) and that it is alive (``WATCHDOG=1``). Without ``$NOTIFY_SOCKET`` every
call is a no-op, so the daemon runs the same in a terminal.

Sending never blocks: the socket is non-blocking and a full or vanished receiver costs a
logged warning, never a stalled event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes:
    # A leading "@" names a socket in the abstract namespace.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    def __init__(self, address: str | None = None):
        self.address = address
        self._sock: socket.socket | None = None
        self.sent: list[str] = []  # the last few messages, for status and tests
        self._warned = False

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it left this process."""
        if self.address is None:
            return False
        message = "\n".join(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), _address(self.address))
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify: cannot send to %s: %s", self.address, exc)
                self._warned = True
            return False
        self._warned = False
        self.sent = [*self.sent[-19:], message]
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.send(*fields)

    def send_status(self, text: str) -> bool:
        """STATUS=text: the line `systemctl status` shows."""
        return self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when
    systemd does not watch this process."""
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (we were started by one)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("sd_notify: ignoring malformed WATCHDOG_USEC=%r", raw)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2
