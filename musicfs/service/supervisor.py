"""Named background tasks with a restart policy, so none of them can die unnoticed.

    supervisor.start("health", monitor.run, Policy.CRITICAL)

* ``CRITICAL`` tasks (health monitor, eviction, watchdog) are restarted with exponential
  backoff. A task that keeps failing (``max_failures`` crashes within ``failure_window``)
  escalates: the supervisor calls ``on_escalate`` and the daemon exits non-zero, so a
  service manager restarts the whole process rather than leave it half-working.
* ``BEST_EFFORT`` tasks are logged and marked failed; the daemon keeps serving.

Every crash is logged with its traceback and the task's name. ``status()`` shows each
task's state for ``musicfs status``. Tasks may be registered before ``run()`` starts (they
are queued) and are refused once ``close()`` began: shutdown stops accepting work first.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from musicfs.backoff import RestartBackoff
from musicfs.resources import describe
from musicfs.service.crashlog import only_cancelled

log = logging.getLogger(__name__)

TaskFn = Callable[[], Awaitable[object]]


class Policy(enum.Enum):
    CRITICAL = "critical"
    BEST_EFFORT = "best-effort"


class TaskState(enum.StrEnum):
    PENDING = "pending"  # registered before the supervisor runs
    RUNNING = "running"
    BACKOFF = "backoff"  # crashed, waiting to restart
    FAILED = "failed"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Still holds (or will hold) a running task."""
        return self in (TaskState.PENDING, TaskState.RUNNING, TaskState.BACKOFF)


class SupervisorClosed(RuntimeError):
    """``start()`` after shutdown began."""


@dataclass
class TaskInfo:
    name: str
    policy: Policy
    state: TaskState = TaskState.PENDING
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)
    ended: trio.Event = field(default_factory=trio.Event, repr=False)

    def set(self, state: TaskState) -> None:
        self.state = state
        self.since = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.value,
            "state": self.state.value,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_error": self.last_error,
            "since": self.since,
        }


class Supervisor:
    def __init__(
        self,
        *,
        on_escalate: Callable[[str, BaseException], None] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_failures: int = 5,
        failure_window: float = 300.0,
    ):
        self.on_escalate = on_escalate
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.tasks: dict[str, TaskInfo] = {}
        self._queued: list[tuple[TaskInfo, TaskFn]] = []
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._stopped = trio.Event()

    # -- registering -------------------------------------------------------------------

    def start(self, name: str, fn: TaskFn, policy: Policy = Policy.BEST_EFFORT) -> None:
        """Run ``fn()`` as the background task ``name`` under ``policy``."""
        if self._closed:
            raise SupervisorClosed(f"task {name}: not started, the daemon is shutting down")
        old = self.tasks.get(name)
        if old is not None and old.state.active:
            raise ValueError(f"task {name} is already running")
        info = TaskInfo(name, policy)
        self.tasks[name] = info
        if self._nursery is None:
            self._queued.append((info, fn))
        else:
            self._nursery.start_soon(self._supervise, info, fn, name=f"task:{name}")

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        """Cancel one task (e.g. to start it again on new objects after a reload)."""
        info = self.tasks.get(name)
        if info is None:
            return
        info.scope.cancel()
        if self._nursery is None or not info.state.active:
            info.set(TaskState.CANCELLED)
            self._queued = [(i, fn) for i, fn in self._queued if i is not info]
            return
        with trio.move_on_after(timeout):
            await info.ended.wait()

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: info.as_dict() for name, info in sorted(self.tasks.items())}

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Host the tasks until ``close()``; queued tasks start now."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                queued, self._queued = self._queued, []
                for info, fn in queued:
                    nursery.start_soon(self._supervise, info, fn, name=f"task:{info.name}")
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._stopped.set()

    async def close(self, timeout: float = 5.0) -> bool:
        """Refuse new tasks, cancel the running ones and wait (up to ``timeout``) until they
        are gone. True if they all stopped in time."""
        self._closed = True
        for info, _ in self._queued:
            info.set(TaskState.CANCELLED)
        self._queued = []
        if self._nursery is None:
            return True
        self._nursery.cancel_scope.cancel()
        with trio.move_on_after(timeout):
            await self._stopped.wait()
            return True
        busy = [
            n for n, i in self.tasks.items() if i.state in (TaskState.RUNNING, TaskState.BACKOFF)
        ]
        log.warning(
            "shutdown: background tasks %s did not stop within %.1fs", ", ".join(busy), timeout
        )
        return False

    async def _supervise(self, info: TaskInfo, fn: TaskFn) -> None:
        try:
            with info.scope:
                await self._restart_loop(info, fn)
            if info.scope.cancelled_caught:
                info.set(TaskState.CANCELLED)
        finally:
            info.ended.set()

    async def _restart_loop(self, info: TaskInfo, fn: TaskFn) -> None:
        backoff = RestartBackoff(self.backoff_initial, self.backoff_max, calm=self.backoff_max)
        recent: deque[float] = deque()
        while True:
            info.set(TaskState.RUNNING)
            started = trio.current_time()
            try:
                await fn()
            except BaseException as exc:
                if only_cancelled(exc) or isinstance(exc, KeyboardInterrupt | SystemExit):
                    # Cancelled (also from inside the task's own nurseries).
                    info.set(TaskState.CANCELLED)
                    raise
                if not isinstance(exc, Exception):
                    # A real error mixed with our own cancellation: report it, end quietly.
                    info.failures += 1
                    info.last_error = describe(exc)
                    log.error("task %s crashed while being cancelled", info.name, exc_info=exc)
                    info.set(TaskState.FAILED)
                    return
                info.failures += 1
                info.last_error = describe(exc)
                now = trio.current_time()
                # A task that ran well for a while starts the backoff over.
                pause = backoff.pause_after(now - started)
                recent.append(now)
                while recent and now - recent[0] > self.failure_window:
                    recent.popleft()
                if info.policy is Policy.BEST_EFFORT:
                    log.error(
                        "task %s (best-effort) crashed; marked failed, the daemon keeps serving",
                        info.name,
                        exc_info=exc,
                    )
                    info.set(TaskState.FAILED)
                    return
                if len(recent) >= self.max_failures:
                    log.critical(
                        "task %s (critical) crashed %d times within %.0fs; giving up so the "
                        "service manager restarts the daemon",
                        info.name,
                        len(recent),
                        self.failure_window,
                        exc_info=exc,
                    )
                    info.set(TaskState.FAILED)
                    if self.on_escalate is not None:
                        self.on_escalate(info.name, exc)
                    return
                log.error(
                    "task %s (critical) crashed; restarting in %.1fs",
                    info.name,
                    pause,
                    exc_info=exc,
                )
                info.set(TaskState.BACKOFF)
                await trio.sleep(pause)
                info.restarts += 1
                continue
            info.set(TaskState.DONE)
            log.info("task %s finished", info.name)
            return
