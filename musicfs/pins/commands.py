"""``musicfs pin``, ``unpin`` and ``pins``: through the running daemon's control socket,
or -- with no daemon -- on the catalog and the cache directly (holding the state lock, so
no daemon starts under them), the way ``musicfs search`` works either way."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from musicfs.config import ConfigError, Settings
from musicfs.pins.manager import PinManager
from musicfs.pins.selection import PinError, PinSpec, mib, specs_from_args
from musicfs.resources import leaves

T = TypeVar("T")
EXIT_FAILED = 1
POLL = 0.25  # seconds between progress updates


def _mount_root(path: str) -> str | None:
    """The MusicFS mount point holding ``path``, if any."""
    from musicfs.service.mounts import find_mount, is_musicfs

    current = Path(path)
    while True:
        entry = find_mount(current)
        if entry is not None:
            return entry.mountpoint if is_musicfs(entry) else None
        if current.parent == current:
            return None
        current = current.parent


def _daemon_socket(settings: Settings, mount_root: str | None) -> Path | None:
    """The control socket of the daemon to ask, or None when none runs on this state
    directory (then the commands work on it directly)."""
    from musicfs.service import registry
    from musicfs.service.control import socket_path

    if mount_root is not None:  # the mount names its daemon
        own = socket_path(settings.run_dir, Path(mount_root))
        return own if own.is_socket() else registry.lookup(Path(mount_root)) or own
    if settings.mountpoint is not None:
        candidates = [socket_path(settings.run_dir, settings.mountpoint)]
        candidates += [p for p in [registry.lookup(settings.mountpoint)] if p is not None]
    else:
        candidates = sorted(
            set(settings.run_dir.glob("control-*.sock")) | set(registry.registered_sockets())
        )
    # Pins belong to a catalog: only the daemon serving this state directory's will do.
    for socket in candidates:
        try:
            reply = _ask(socket, "pins", timeout=1.0)
        except PinError:
            continue  # a daemon that does not answer (or is not ours to ask)
        if reply is not None and reply["pins"].get("catalog") == str(settings.catalog_path):
            return socket
    return None


def _ask(socket: Path | None, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any] | None:
    """The daemon's reply, or None if no daemon listens there (work offline then)."""
    from musicfs.service.control import ControlError, request

    if socket is None:
        return None
    try:
        return request(socket, cmd, timeout, **args)
    except ControlError as exc:
        message = str(exc)
        if message.startswith("no running MusicFS"):
            return None
        raise PinError(message) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class _Bar:
    """A rich progress bar over the cached bytes of ``pins`` until all are complete."""

    def __init__(self, pins: list[dict[str, Any]]):
        self.ids = {p["id"] for p in pins}
        self.total = sum(p["bytes"] for p in pins)
        self.label = pins[0]["query"] if len(pins) == 1 else f"{len(pins)} pins"
        self.progress = _progress()
        self.task = self.progress.add_task(f"pinning {self.label}", total=self.total)
        self.mine: list[dict[str, Any]] = []

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def done(self, status: dict[str, Any]) -> bool:
        self.mine = [p for p in status["pins"] if p["id"] in self.ids]
        if len(self.mine) < len(self.ids):
            raise PinError("the pin was removed while waiting for it")
        waiting = status.get("last_error") if not status.get("fetching") else None
        self.progress.update(
            self.task,
            completed=sum(p["cached_bytes"] for p in self.mine),
            description=f"pinning {self.label}" + (f" (waiting: {waiting})" if waiting else ""),
        )
        return all(p["complete"] for p in self.mine)

    def summary(self) -> str:
        left = sum(p["left_out"] for p in self.mine)
        note = f"; {left} tracks did not fit in the cache" if left else ""
        tracks = sum(p["tracks"] for p in self.mine)
        return f"pinned {self.label}: {tracks} tracks, {mib(self.total)}, all cached{note}"


def _offline(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(fn, *args)``, a lone error out of its nurseries raised as itself."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        found = leaves(group)
        if len(found) == 1:
            raise found[0] from None
        raise


@contextlib.asynccontextmanager
async def offline_manager(settings: Settings) -> AsyncIterator[PinManager]:
    """A pin manager on the catalog and cache themselves, fetching through the origins."""
    from musicfs.cache.reader import CachingReader
    from musicfs.cache.store import ChunkStore
    from musicfs.catalog.db import Catalog
    from musicfs.library.coordinator import open_pool
    from musicfs.search import catalog_searcher
    from musicfs.service.state_lock import StateLock

    if not settings.catalog_path.exists():
        raise ConfigError(f"{settings.catalog_path}: no catalog yet; run `musicfs scan` first")
    lock = StateLock(settings.state_dir)
    lock.acquire()  # a daemon we could not reach still holds it: StartupError says so
    catalog = Catalog(settings.catalog_path)
    pool = open_pool(settings)
    reader = CachingReader(
        ChunkStore.from_settings(settings.cache_dir, settings.cache),
        pool.read,
        memory_bytes=settings.cache.memory,
    )
    try:
        searcher = await trio.to_thread.run_sync(
            catalog_searcher, catalog, settings.library.template, settings.state_dir
        )
        try:
            await reader.open()
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                manager = PinManager(
                    catalog,
                    reader.store,
                    reader.warm,
                    settings.pins,
                    tree=lambda: searcher.tree,
                    search=lambda q, n: [hit.path for hit in searcher.search(q, n)],
                )
                await manager.evaluate()
                yield manager
                nursery.cancel_scope.cancel()
        finally:
            await reader.aclose()
            searcher.close()
    finally:
        await pool.aclose()
        catalog.close()
        lock.release()


def _targets(settings: Settings, words: list[str]) -> tuple[list[PinSpec], str | None, Path | None]:
    """The pins ``words`` name, the mount point they are paths in (if they are), and the
    control socket of the daemon to ask (None: work without one)."""
    specs = specs_from_args(words, _mount_root)
    root = _mount_root(os.path.abspath(words[0])) if specs[0].kind == "path" else None
    return specs, root, _daemon_socket(settings, root)


def _no_daemon(root: str) -> str:
    return f"no MusicFS daemon answers for {root}; pass the --config or --state-dir it runs with"


def cmd_pin(args: argparse.Namespace, settings: Settings) -> int:
    specs, root, socket = _targets(settings, args.query)
    try:
        pinned = [_ask(socket, "pin", kind=s.kind, text=s.text) for s in specs]
        if all(reply is not None for reply in pinned):
            pins = [reply["pin"] for reply in pinned if reply is not None]
            if args.no_wait:
                for p in pins:
                    print(f"pinned {p['query']}: {p['tracks']} tracks, {mib(p['bytes'])}")
                return 0

            with _Bar(pins) as bar:
                while True:
                    reply = _ask(socket, "pins")
                    if reply is None:
                        raise PinError("the daemon stopped while the pin was being fetched")
                    if bar.done(reply["pins"]):
                        break
                    time.sleep(POLL)
            print(bar.summary())
            return 0
        if root is not None:
            raise PinError(_no_daemon(root))
        return _offline(_pin_offline, settings, specs, args.no_wait)
    except PinError as exc:
        print(f"musicfs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nstopped waiting; the pin stays and is fetched by the daemon", file=sys.stderr)
        return 130


async def _pin_offline(settings: Settings, specs: list[PinSpec], no_wait: bool) -> int:
    async with offline_manager(settings) as manager:
        pins = [await manager.add(spec) for spec in specs]
        if no_wait:
            for p in pins:
                print(f"pinned {p['query']}: {p['tracks']} tracks (fetched by the next daemon)")
            return 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.run)
            with _Bar(pins) as bar:
                while not bar.done(manager.status()):
                    await trio.sleep(POLL)
            nursery.cancel_scope.cancel()
        print(bar.summary())
        return 0


def cmd_unpin(args: argparse.Namespace, settings: Settings) -> int:
    specs, root, socket = _targets(settings, args.query)
    try:
        for spec in specs:
            if _ask(socket, "unpin", kind=spec.kind, text=spec.text) is None:
                if root is not None:
                    raise PinError(_no_daemon(root))
                _offline(_unpin_offline, settings, spec)
            print(f"unpinned {spec.text}")
    except PinError as exc:
        print(f"musicfs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


async def _unpin_offline(settings: Settings, spec: PinSpec) -> None:
    async with offline_manager(settings) as manager:
        await manager.remove(spec)


def cmd_pins(args: argparse.Namespace, settings: Settings) -> int:
    reply = _ask(_daemon_socket(settings, None), "pins")
    status = reply["pins"] if reply is not None else _offline(_status_offline, settings)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    table = Table("id", "pin", "tracks", "size", "cached", box=None)
    for p in status["pins"]:
        share = p["cached_bytes"] / p["bytes"] if p["bytes"] else 1.0
        left = f" ({p['left_out']} do not fit)" if p["left_out"] else ""
        table.add_row(
            str(p["id"]), p["query"], f"{p['tracks']}{left}", mib(p["bytes"]), f"{share:.0%}"
        )
    Console().print(table)
    print(format_pins(status))
    return 0


async def _status_offline(settings: Settings) -> dict[str, Any]:
    async with offline_manager(settings) as manager:
        return manager.status()


def format_pins(status: dict[str, Any]) -> str:
    """One line for ``musicfs status`` and ``musicfs pins``."""
    pins = status.get("pins") or []
    share = status["cached_bytes"] / status["bytes"] if status.get("bytes") else 1.0
    line = (
        f"  pins: {len(pins)} ({status.get('tracks', 0)} tracks, {mib(status.get('bytes', 0))} "
        f"of {mib(status.get('capacity', 0))} the cache can hold, {share:.0%} cached)"
    )
    if status.get("fetching"):
        line += f", fetching at {mib(status.get('rate', 0))}/s"
    if status.get("last_error"):
        line += f", last error: {status['last_error']}"
    return line
