"""Named fault hooks for tests: free when off, configured from ``MUSICFS_FAILPOINTS``.

The variable holds ``name=action;name=action``. An action is one of

* ``error(EIO)`` / ``error(28)`` -- raise ``OSError`` with that errno,
* ``sleep(250)`` -- block the calling thread for that many milliseconds,
* ``exit`` / ``exit(3)`` -- end the process at once with ``os._exit`` (a simulated crash),
* ``panic`` -- raise ``FailpointPanic`` (an unexpected bug, not an I/O error),
* ``off``.

and may be prefixed by modifiers: ``2*`` fires only the first two hits, ``after(3)->``
lets three hits pass before firing. Example: ``cas.put.after_rename=after(5)->exit``.

A disabled failpoint costs one dictionary lookup, so hooks stay in production code.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
import threading
import time
from dataclasses import dataclass

ENV_VAR = "MUSICFS_FAILPOINTS"


class FailpointPanic(RuntimeError):
    """Raised by the ``panic`` action: stands in for an unexpected bug."""


@dataclass
class _Action:
    kind: str  # error | sleep | exit | panic | off
    arg: int
    skip: int  # hits to let pass before firing
    times: int | None  # how many times to fire (None: forever)
    hits: int = 0
    fired: int = 0


_active: dict[str, _Action] = {}
_lock = threading.Lock()
_ACTION_RE = re.compile(
    r"^(?:(?P<times>\d+)\*)?(?:after\((?P<skip>\d+)\)->)?(?P<kind>error|sleep|exit|panic|off)"
    r"(?:\((?P<arg>[A-Z0-9]+)\))?$"
)


def _parse_errno(text: str) -> int:
    if text.isdigit():
        return int(text)
    value = getattr(errno_mod, text, None)
    if not isinstance(value, int):
        raise ValueError(f"unknown errno name {text!r}")
    return value


def parse_action(spec: str) -> _Action:
    """Parse one action string; raises ``ValueError`` with the offending text."""
    match = _ACTION_RE.match(spec.strip())
    if not match:
        raise ValueError(f"bad failpoint action {spec!r}")
    kind = match["kind"]
    raw = match["arg"]
    if kind == "error":
        arg = _parse_errno(raw or "EIO")
    elif kind == "sleep":
        arg = int(raw or "1000")
    elif kind == "exit":
        arg = int(raw or "77")
    else:
        arg = 0
    times = int(match["times"]) if match["times"] else None
    return _Action(kind, arg, int(match["skip"] or 0), times)


def configure(spec: str | None) -> None:
    """Replace all failpoints with those in ``spec`` (the ``MUSICFS_FAILPOINTS`` syntax)."""
    new: dict[str, _Action] = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        name, sep, action = part.partition("=")
        if not sep:
            raise ValueError(f"bad failpoint {part!r}: expected name=action")
        new[name.strip()] = parse_action(action)
    with _lock:
        _active.clear()
        _active.update(new)


def set(name: str, action: str) -> None:
    with _lock:
        _active[name] = parse_action(action)


def clear(name: str | None = None) -> None:
    with _lock:
        if name is None:
            _active.clear()
        else:
            _active.pop(name, None)


def fail_point(name: str) -> None:
    """Fire the fault configured for ``name``, if any."""
    action = _active.get(name)
    if action is None:
        return
    with _lock:
        action.hits += 1
        if action.kind == "off" or action.hits <= action.skip:
            return
        if action.times is not None and action.fired >= action.times:
            return
        action.fired += 1
    if action.kind == "error":
        raise OSError(action.arg, f"failpoint {name}: {os.strerror(action.arg)}")
    if action.kind == "sleep":
        time.sleep(action.arg / 1000)
    elif action.kind == "exit":
        os._exit(action.arg)
    elif action.kind == "panic":
        raise FailpointPanic(f"failpoint {name}")


def hits(name: str) -> int:
    action = _active.get(name)
    return action.hits if action else 0


configure(os.environ.get(ENV_VAR))


def _sleep_seconds(name: str) -> float | None:
    """Fire ``name``'s fault; a ``sleep`` action is not slept but returned (seconds), so
    an event loop can sleep it in its own way."""
    action = _active.get(name)
    if action is None:
        return None
    if action.kind != "sleep":
        fail_point(name)
        return None
    with _lock:
        action.hits += 1
        if action.hits <= action.skip or (
            action.times is not None and action.fired >= action.times
        ):
            return None
        action.fired += 1
    return action.arg / 1000


async def async_fail_point(name: str) -> None:
    """Like ``fail_point`` but a ``sleep`` action sleeps the calling trio task, not the loop."""
    seconds = _sleep_seconds(name)
    if seconds is not None:
        import trio  # local: keep this module importable from plain threads and subprocesses

        await trio.sleep(seconds)


async def asyncio_fail_point(name: str) -> None:
    """The same for coroutines on an asyncio loop (the SFTP origin's): while a ``sleep``
    action sleeps, the loop keeps running -- connections can die meanwhile."""
    seconds = _sleep_seconds(name)
    if seconds is not None:
        import asyncio

        await asyncio.sleep(seconds)
