"""What a running daemon answers on its control socket: ``status``, ``unmount``,
``reload``, ``search`` (``musicfs search`` asks the daemon's open index) and the pin
commands (``musicfs.service.control`` is the socket itself)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import trio

from musicfs.config import Settings
from musicfs.pins.manager import PinManager, control_handlers
from musicfs.search import QueryError, SearchIndex
from musicfs.service import control, registry
from musicfs.service.crashlog import named_task

log = logging.getLogger(__name__)


class Controlled(Protocol):
    """The parts of a running daemon its control socket reaches."""

    settings: Settings
    mountpoint: Path
    pins: PinManager | None
    search: SearchIndex

    def status(self) -> dict[str, Any]: ...

    def request_shutdown(self, code: int | None = None) -> None: ...

    async def reload(self) -> str: ...


async def serve_control(daemon: Controlled, nursery: trio.Nursery) -> None:
    """Bind the daemon's socket and serve it in ``nursery``; a socket that cannot be
    bound is logged (``musicfs status`` then cannot reach us), never fatal."""
    path = control.socket_path(daemon.settings.run_dir, daemon.mountpoint)

    async def status(request: dict[str, Any]) -> dict[str, Any]:
        return {"status": daemon.status()}

    async def unmount(request: dict[str, Any]) -> dict[str, Any]:
        log.info("control: unmount requested")
        daemon.request_shutdown()
        return {"stopping": True, "pid": os.getpid()}

    async def reload(request: dict[str, Any]) -> dict[str, Any]:
        return {"result": await daemon.reload()}

    async def search(request: dict[str, Any]) -> dict[str, Any]:
        query, limit = str(request.get("query", "")), int(request.get("limit", 100))
        catalog = os.path.abspath(daemon.settings.catalog_path)  # whose paths these are
        try:
            hits = await trio.to_thread.run_sync(daemon.search.search, query, limit)
        except QueryError as exc:
            return {"catalog": catalog, "query_error": str(exc)}
        return {"catalog": catalog, "paths": [hit.path for hit in hits]}

    handlers: dict[str, control.Handler] = {
        "status": status,
        "unmount": unmount,
        "reload": reload,
        "search": search,
    }
    if daemon.pins is not None:
        handlers.update(control_handlers(daemon.pins))
    server = control.ControlServer(path, handlers)
    try:
        await server.bind()
    except OSError as exc:
        log.error("control socket %s: %s; `musicfs status` cannot reach this daemon", path, exc)
        return
    # So that the mount point alone finds this socket, whatever our --state-dir.
    entry = await trio.to_thread.run_sync(registry.register, daemon.mountpoint, path)

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            if entry is not None:
                registry.unregister(entry, path)

    nursery.start_soon(named_task("control", serve), name="control")
