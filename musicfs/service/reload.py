"""A config reload (SIGHUP, ``musicfs reload``): what may change while mounted, what needs
a restart, and applying the change to the running components."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Protocol

import trio

from musicfs.cache.reader import CachingReader
from musicfs.config import ConfigError, Settings
from musicfs.fuse.operations import MusicOperations
from musicfs.library.coordinator import SyncCoordinator, open_pool
from musicfs.pins.manager import PinManager
from musicfs.service.notify import Notifier
from musicfs.service.supervisor import Policy, Supervisor

log = logging.getLogger(__name__)

# Settings bound to the mount, its kernel options or the on-disk layout: changing them
# needs a remount, so a reload keeps the running value and says so.
RESTART_ONLY = (
    "mountpoint",
    "state_dir",
    "cache_dir",
    "runtime_dir",
    "fuse.allow_other",
    "fuse.max_tasks",
    "fuse.max_background",
    "cache.chunk_size",
    "metrics.listen",
)
# Settings that change which origins exist or how they are reached: the pool is rebuilt.
_ORIGIN_KEYS = ("origins", "timeouts")


@dataclass(frozen=True)
class ReloadPlan:
    settings: Settings  # what the daemon runs with from now on
    changed: tuple[str, ...]  # dotted names applied
    needs_restart: tuple[str, ...]  # dotted names changed in the file but kept as they were
    origins_changed: bool
    resync: bool


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(value):
        if f.name == "source":
            continue
        item = getattr(value, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(item) and not isinstance(item, type):
            out.update(_flatten(item, name + "."))
        else:
            out[name] = item
    return out


def _set(settings: Settings, dotted: str, value: Any) -> Settings:
    head, _, tail = dotted.partition(".")
    if not tail:
        return replace(settings, **{head: value})
    return replace(settings, **{head: replace(getattr(settings, head), **{tail: value})})


def plan_reload(running: Settings, loaded: Settings) -> ReloadPlan:
    """Compare the running settings with a freshly loaded file."""
    before, after = _flatten(running), _flatten(loaded)
    changed = tuple(k for k in after if before.get(k) != after[k])
    # A mount point given on the command line overrides the file; absent in the file is
    # not a change.
    needs_restart = tuple(
        k for k in changed if k in RESTART_ONLY and not (k == "mountpoint" and after[k] is None)
    )
    result = loaded
    for name in RESTART_ONLY:
        result = _set(result, name, before[name])
    applied = tuple(k for k in changed if k not in RESTART_ONLY)
    origins_changed = any(k.split(".")[0] in _ORIGIN_KEYS for k in applied)
    return ReloadPlan(
        settings=result,
        changed=applied,
        needs_restart=needs_restart,
        origins_changed=origins_changed,
        resync=origins_changed or "library.template" in applied,
    )


class Reloadable(Protocol):
    """The parts of a running daemon a reload changes."""

    settings: Settings
    library: SyncCoordinator | None
    ops: MusicOperations | None
    reader: CachingReader | None
    pins: PinManager | None
    supervisor: Supervisor
    notifier: Notifier

    def status_line(self) -> str: ...

    def resync(self) -> None: ...


async def reload(daemon: Reloadable, load: Callable[[], Settings] | None) -> str:
    """Re-read the config with ``load``: apply what can change while mounted, log the rest."""
    if load is None or daemon.settings.source is None:
        message = "reload: started without --config, nothing to re-read"
        log.warning(message)
        return message
    daemon.notifier.reloading()
    try:
        try:
            new = await trio.to_thread.run_sync(load)
        except ConfigError as exc:
            message = f"reload: {exc}; keeping the running configuration"
            log.error(message)
            return message
        return await apply_settings(daemon, new)
    finally:
        daemon.notifier.send("READY=1", f"STATUS={daemon.status_line()}")


async def apply_settings(daemon: Reloadable, new: Settings) -> str:
    """Apply ``new`` to the running components; returns what was applied."""
    plan = plan_reload(daemon.settings, new)
    for name in plan.needs_restart:
        log.warning("reload: %s changed; it takes effect after a restart", name)
    old, daemon.settings = daemon.settings, plan.settings
    library = daemon.library
    if library is not None:
        library.settings = plan.settings
        if "library.template" in plan.changed:
            library.set_template(plan.settings.library.template)
        if plan.origins_changed:
            old_pool = library.pool
            library.pool = open_pool(plan.settings)
            log.info("reload: origins now %s", ", ".join(o.display_url for o in library.pool))
            # The health monitor watches the pool it was started on: move it over.
            await daemon.supervisor.stop("health")
            if not daemon.supervisor.closed:
                daemon.supervisor.start("health", library.pool.health.run, Policy.CRITICAL)
            await old_pool.aclose()
    if daemon.ops is not None:
        daemon.ops.settings = plan.settings.fuse
    if daemon.reader is not None:
        await daemon.reader.reconfigure(plan.settings.cache)
    if daemon.pins is not None:
        daemon.pins.settings = plan.settings.pins
    if plan.settings.log_level != old.log_level:
        logging.getLogger().setLevel(plan.settings.log_level.upper())
    if plan.resync:
        daemon.resync()
    applied = ", ".join(plan.changed) or "nothing changed"
    log.info("reload: applied %s", applied)
    return applied
