"""What ``musicfs status`` and the sd_notify STATUS line report: assembled from the
components' own reports, so each component stays the one source of its numbers."""

from __future__ import annotations

import enum
import os
import time
from pathlib import Path
from typing import Any, Protocol

import trio

from musicfs.cache.reader import CachingReader
from musicfs.fuse.operations import MusicOperations
from musicfs.library.coordinator import SyncCoordinator
from musicfs.pins.manager import PinManager
from musicfs.resources import describe
from musicfs.service.fuse_session import FuseSession
from musicfs.service.metrics import Snapshot
from musicfs.service.notify import Notifier
from musicfs.service.supervisor import Supervisor
from musicfs.service.watchdog import Watchdog

STATUS_INTERVAL = 1.0  # how often the STATUS= line is checked


class DaemonState(enum.StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"

    @property
    def shutting_down(self) -> bool:
        return self in (DaemonState.STOPPING, DaemonState.STOPPED)


class Running(Protocol):
    """The parts of a running daemon a status report reads."""

    state: DaemonState
    mountpoint: Path
    state_dir: Path
    started_at: float
    supervisor: Supervisor
    library: SyncCoordinator | None
    reader: CachingReader | None
    ops: MusicOperations | None
    session: FuseSession | None
    watchdog: Watchdog | None
    pins: PinManager | None
    catalog_moved_aside: Path | None


# Modes other than "online" that a component may report; the first one found wins.
_NOT_ONLINE = ("offline", "degraded", "passthrough")


def mode(daemon: Running) -> str:
    """online | degraded | offline | passthrough, from the components that report one
    (the cache's passthrough wins over the origins' mode)."""
    modes = []
    if daemon.reader is not None:
        modes.append(daemon.reader.statistics().store.mode.value)
    if daemon.library is not None:
        modes.append(daemon.library.pool.statistics().mode.value)
    return next((m for m in modes if m in _NOT_ONLINE), "online")


def track_count(daemon: Running) -> int:
    return daemon.ops.tree.file_count if daemon.ops else 0


def status_line(daemon: Running) -> str:
    """One line for sd_notify's STATUS= (and ``systemctl status``)."""
    parts = [daemon.state.value, mode(daemon), f"{track_count(daemon)} tracks"]
    if daemon.reader is not None:
        parts.append(f"cache {daemon.reader.statistics().store.used_bytes // 1024**2} MiB")
    if daemon.library is not None and daemon.library.progress:
        p = daemon.library.progress
        parts.append(f"syncing {p['origin']} {p['done']}/{p['total'] or '?'}")
    return "; ".join(parts)


def status_report(daemon: Running) -> dict[str, Any]:
    """The whole report ``musicfs status`` prints (JSON-able)."""
    session, library = daemon.session, daemon.library
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "mountpoint": str(daemon.mountpoint),
        # Which library this is: daemons of one user may share a runtime dir.
        "state_dir": str(daemon.state_dir),
        "state": daemon.state.value,
        "mode": mode(daemon),
        "uptime": round(time.time() - daemon.started_at, 1),
        "tracks": track_count(daemon),
        "tasks": daemon.supervisor.status(),
        "sync": library.status() if library else None,
        "origins": status_of(library.pool) if library else None,
        "cache": status_of(daemon.reader),
        "watchdog": daemon.watchdog.status() if daemon.watchdog else None,
        "pins": daemon.pins.status() if daemon.pins else None,
        "catalog_moved_aside": str(daemon.catalog_moved_aside)
        if daemon.catalog_moved_aside
        else None,
    }
    if session is not None:
        fuse = session.statistics()
        st = fuse.counters
        report["fuse"] = {
            "reads": st.reads,
            "read_bytes": st.read_bytes,
            "read_errors": st.read_errors,
            "deadline_misses": st.deadline_misses,
            "inflight": st.inflight,
            "unexpected": st.unexpected,
            "cancelled": st.cancelled,
            "worker_restarts": fuse.worker_restarts,
            "max_background": fuse.max_background,
            "requests": dict(st.by_op),
        }
    return report


async def send_status_lines(daemon: Running, notifier: Notifier) -> None:
    """Keep sd_notify's STATUS= current: checked every second, sent when it changed."""
    last = ""
    while True:
        line = status_line(daemon)
        if line != last:
            notifier.send_status(line)
            last = line
        await trio.sleep(STATUS_INTERVAL)


def status_of(component: object) -> object:
    """A component's own ``status()``, or what went wrong asking for it."""
    status = getattr(component, "status", None)
    if not callable(status):
        return None
    try:
        return status()
    except Exception as exc:
        return {"error": describe(exc)}


def metrics_snapshot(daemon: Running) -> Snapshot:
    """What a Prometheus scrape exports: the components' statistics and the status."""
    library = daemon.library
    return Snapshot(
        statistics={
            "musicfs_fuse": daemon.session.statistics() if daemon.session else None,
            "musicfs_reader": daemon.reader.statistics() if daemon.reader else None,
            "musicfs_pool": library.pool.statistics() if library else None,
        },
        status=status_report(daemon),
    )
