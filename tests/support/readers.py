"""A player stand-in: a thread reading a file on a mount, recording what it got."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path


class Reader(threading.Thread):
    """Reads ``path`` in ``block``-sized O_DIRECT pieces (each one reaches the daemon),
    keeping the bytes, the errno of the first failure and when it finished."""

    def __init__(self, path: Path, block: int = 64 * 1024):
        super().__init__(daemon=True)
        self.path, self.block = path, block
        self.data = bytearray()
        self.error: int | None = None
        self.finished_at: float | None = None
        self.started_reading = threading.Event()

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except OSError as exc:
            self.error = exc.errno
        else:
            try:
                while True:
                    self.started_reading.set()
                    piece = os.pread(fd, self.block, len(self.data))
                    if not piece:
                        break
                    self.data += piece
            except OSError as exc:
                self.error = exc.errno
            finally:
                with contextlib.suppress(OSError):  # ENOTCONN once the daemon is gone
                    os.close(fd)
        self.finished_at = time.monotonic()
        self.started_reading.set()
