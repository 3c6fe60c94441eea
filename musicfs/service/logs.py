"""Operator logs: one line per event, to stderr (journald adds its own timestamps)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journal
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter is not an operator event.
    for noisy in ("pyfuse3", "asyncssh", "urllib3", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
