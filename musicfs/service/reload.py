"""What a config reload (SIGHUP) may change while mounted, and what needs a restart."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from musicfs.config import Settings

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
