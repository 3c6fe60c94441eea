"""An opt-in Prometheus endpoint with the figures ``musicfs status`` reports.

Off unless ``[metrics] listen`` is set; a bare port binds to loopback only, so nothing is
exposed beyond the machine unless the operator names an address. A scrape asks the
daemon's event loop for a ``Snapshot`` -- the components' ``statistics()`` objects (see
``musicfs.statistics``) and, for what has none, the status report -- and turns it into
metric families; the HTTP server (prometheus-client's) runs in its own thread.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from musicfs.service.metrics_settings import MetricsSettings

log = logging.getLogger("musicfs.metrics")


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports: the components' ``statistics()`` objects by metric
    prefix (``musicfs_fuse``: the FUSE session's, ...), and the status report for what
    has no statistics object (state, each origin's health, syncs, background tasks)."""

    statistics: dict[str, Any]
    status: dict[str, Any]


# Fields of a ``counters`` dataclass that are levels, not running totals.
_LEVELS = frozenset({"inflight", "max_read_seconds"})
# Top-level statistics fields that only grow.
_TOTALS = frozenset({"worker_restarts"})
# A nested statistics object reported under its own prefix.
_NESTED = {"store": "musicfs_cache"}
_DOC = "see musicfs status"


def _number(value: Any) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> Metric:
    family = CounterMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def from_statistics(prefix: str, stats: Any) -> Iterator[Metric]:
    """A statistics dataclass as metric families: its ``counters`` as ``_total`` counters
    (a dict of them labelled by ``op``), other numbers as gauges, an enum as a gauge
    labelled with its value, a nested statistics object under its own prefix."""
    for f in fields(stats):
        value = getattr(stats, f.name)
        name = f"{prefix}_{f.name}"
        if f.name == "counters" and is_dataclass(value):
            yield from _counters(prefix, value)
        elif is_dataclass(value):
            yield from from_statistics(_NESTED.get(f.name, name), value)
        elif isinstance(value, enum.Enum):
            yield _gauge(name, f"1 for the current {f.name}", 1.0, {f.name: str(value.value)})
        elif (number := _number(value)) is not None:
            if f.name in _TOTALS:
                yield _counter(name, _DOC, number)
            else:
                yield _gauge(name, _DOC, number)


def _counters(prefix: str, counters: Any) -> Iterator[Metric]:
    for f in fields(counters):
        value = getattr(counters, f.name)
        if isinstance(value, dict):
            family = CounterMetricFamily(f"{prefix}_requests", "requests by op", labels=["op"])
            for op, count in sorted(value.items()):
                family.add_metric([str(op)], float(count))
            yield family
        elif (number := _number(value)) is not None:
            name = f"{prefix}_{f.name}"
            yield _gauge(name, _DOC, number) if f.name in _LEVELS else _counter(name, _DOC, number)


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """A scrape's metric families (names prefixed ``musicfs_``)."""
    status = snapshot.status
    yield _gauge("musicfs_up", "1 while the daemon answers", 1.0)
    yield _gauge(
        "musicfs_state",
        "lifecycle state and mode (online/degraded/offline/passthrough) of the daemon",
        1.0,
        {"state": str(status.get("state")), "mode": str(status.get("mode"))},
    )
    if (uptime := _number(status.get("uptime"))) is not None:
        yield _gauge("musicfs_uptime_seconds", "seconds since start", uptime)
    if (tracks := _number(status.get("tracks"))) is not None:
        yield _gauge("musicfs_tracks", "tracks in the tree", tracks)
    for prefix, stats in sorted(snapshot.statistics.items()):
        if stats is not None:
            yield from from_statistics(prefix, stats)
    yield from _origins(status.get("origins") or {})
    yield from _sync(status.get("sync") or {})
    yield from _tasks(status.get("tasks") or {})


def _origins(origins: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "musicfs_origin_state", "1 for the origin's health state", labels=["origin", "state"]
    )
    checks = CounterMetricFamily("musicfs_origin_checks", "health checks", labels=["origin"])
    failures = GaugeMetricFamily(
        "musicfs_origin_consecutive_failures", "failed checks in a row", labels=["origin"]
    )
    latency = GaugeMetricFamily(
        "musicfs_origin_latency_seconds", "last health check's latency", labels=["origin"]
    )
    for name, health in sorted((origins.get("origins") or {}).items()):
        state.add_metric([name, str(health.get("state"))], 1.0)
        checks.add_metric([name], float(health.get("checks") or 0))
        failures.add_metric([name], float(health.get("consecutive_failures") or 0))
        if (ms := _number(health.get("latency_ms"))) is not None:
            latency.add_metric([name], ms / 1000)
    yield from (state, checks, failures, latency)


def _sync(sync: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("musicfs_sync_running", "1 while a sync runs", float(bool(sync.get("running"))))
    yield _counter("musicfs_sync_finished", "syncs finished", float(sync.get("finished") or 0))
    last: dict[str, GaugeMetricFamily] = {}
    for origin, figures in sorted((sync.get("last") or {}).items()):
        for key, value in sorted(figures.items()):
            if (number := _number(value)) is None:
                continue
            family = last.setdefault(
                key,
                GaugeMetricFamily(
                    f"musicfs_sync_last_{key}", f"last sync of the origin: {key}", labels=["origin"]
                ),
            )
            family.add_metric([origin], number)
    yield from last.values()


def _tasks(tasks: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "musicfs_task_state", "1 for the background task's state", labels=["task", "state"]
    )
    restarts = CounterMetricFamily("musicfs_task_restarts", "task restarts", labels=["task"])
    failures = CounterMetricFamily("musicfs_task_failures", "task crashes", labels=["task"])
    for name, info in sorted(tasks.items()):
        state.add_metric([name, str(info.get("state"))], 1.0)
        restarts.add_metric([name], float(info.get("restarts") or 0))
        failures.add_metric([name], float(info.get("failures") or 0))
    yield from (state, restarts, failures)


class StatusCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            taken = self.snapshot()
        except Exception as exc:  # the loop is gone or wedged: say so, don't 500
            log.warning("metrics: no status snapshot (%s)", exc)
            yield _gauge("musicfs_up", "1 while the daemon answers", 0.0)
            return
        yield from families(taken)


class MetricsServer:
    """prometheus-client's HTTP server on ``settings.address``, in a daemon thread."""

    def __init__(self, settings: MetricsSettings, snapshot: Callable[[], Snapshot]):
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(snapshot))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @classmethod
    def on_loop(cls, settings: MetricsSettings, snapshot: Callable[[], Snapshot]) -> MetricsServer:
        """Started, its scrapes (in the server's thread) taking ``snapshot()`` on the
        calling trio loop, where the components' figures are consistent."""
        token = trio.lowlevel.current_trio_token()
        server = cls(settings, lambda: trio.from_thread.run_sync(snapshot, trio_token=token))
        server.start()
        return server

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def start(self) -> bool:
        """Bind and serve; False (logged) if the address cannot be bound."""
        from prometheus_client import start_http_server

        address = self.settings.address
        if address is None:
            return False
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d: %s (errno=%s)", host, port, exc, exc.errno)
            return False
        log.info("metrics: serving Prometheus metrics on http://%s:%d/metrics", host, self.port)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
