"""The command line of ``musicfs pin``, ``unpin`` and ``pins`` (run by
``musicfs/pins/commands.py``), apart from the commands: every ``musicfs`` command builds the
whole parser, and the pin commands' imports (the cache, rich, trio) are not theirs to pay."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    pin = sub.add_parser(
        "pin",
        help="keep the tracks a query (or a path in the mount) matches in the cache",
        description="Fetch every matching track into the cache and keep it there (never "
        "evicted); re-evaluated after every sync, so tracks added later that match are "
        "pinned too. Exit 0 once all are cached; 1 if refused (it would not fit).",
    )
    common(pin)
    pin.add_argument("--no-wait", action="store_true", help="return at once; fetched meanwhile")
    pin.add_argument("query", nargs="+", help="a search query, or paths inside the mount")
    unpin = sub.add_parser("unpin", help="remove a pin (the same query or path as pinned)")
    common(unpin)
    unpin.add_argument("query", nargs="+", help="the pinned query, or paths inside the mount")
    pins = sub.add_parser("pins", help="list the pins: tracks, size, how much is cached")
    common(pins)
    pins.add_argument("--json", action="store_true", help="machine-readable output")
