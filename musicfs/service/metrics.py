"""An opt-in Prometheus endpoint with the figures ``musicfs status`` reports.

Off unless ``[metrics] listen`` is set; a bare port binds to loopback only, so nothing is
exposed beyond the machine unless the operator names an address. A scrape asks the
daemon's event loop for a status snapshot (``snapshot``) and turns it into metric
families; the HTTP server (prometheus-client's) runs in its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("musicfs.metrics")

LOOPBACK = "127.0.0.1"
# fuse status keys that are levels, not running totals
_FUSE_GAUGES = ("inflight", "max_background")


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "host:port", or "port" for loopback; "" = no endpoint

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        return (host.strip("[]") if sep else LOOPBACK) or LOOPBACK, int(port)


def parse_listen(value: Any) -> str:
    """``"127.0.0.1:9101"``, ``"[::1]:9101"``, ``"9101"`` (loopback) or ``""`` (off)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string like '127.0.0.1:9101', got {value!r}")
    if not value:
        return value
    _, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port or a port number 1-65535, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _counters(name: str, doc: str, values: dict[str, Any]) -> Iterator[Metric]:
    """One counter family per numeric entry: ``<name>_<key>_total``."""
    for key, value in sorted(values.items()):
        number = _number(value)
        if number is not None:
            family = CounterMetricFamily(f"{name}_{key}", f"{doc}: {key}")
            family.add_metric([], number)
            yield family


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def families(status: dict[str, Any]) -> Iterator[Metric]:
    """The status snapshot as Prometheus metric families (names prefixed ``musicfs_``)."""
    yield _gauge("musicfs_up", "1 while the daemon answers", 1.0)
    yield _gauge(
        "musicfs_state",
        "lifecycle state and mode (online/degraded/offline/passthrough) of the daemon",
        1.0,
        {"state": str(status.get("state")), "mode": str(status.get("mode"))},
    )
    for key, doc in (("uptime", "seconds since start"), ("tracks", "tracks in the tree")):
        number = _number(status.get(key))
        if number is not None:
            yield _gauge(f"musicfs_{key}" + ("_seconds" if key == "uptime" else ""), doc, number)
    yield from _fuse(status.get("fuse") or {})
    yield from _origins(status.get("origins") or {})
    yield from _cache(status.get("cache") or {})
    yield from _sync(status.get("sync") or {})
    yield from _tasks(status.get("tasks") or {})


def _fuse(fuse: dict[str, Any]) -> Iterator[Metric]:
    levels = {k: fuse.get(k) for k in _FUSE_GAUGES}
    totals = {k: v for k, v in fuse.items() if k not in _FUSE_GAUGES and k != "requests"}
    yield from _counters("musicfs_fuse", "FUSE requests", totals)
    for key, value in levels.items():
        number = _number(value)
        if number is not None:
            yield _gauge(f"musicfs_fuse_{key}", f"FUSE {key}", number)
    requests = CounterMetricFamily("musicfs_fuse_requests", "FUSE requests by op", labels=["op"])
    for op, count in sorted((fuse.get("requests") or {}).items()):
        requests.add_metric([op], float(count))
    yield requests


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
        if _number(health.get("latency_ms")) is not None:
            latency.add_metric([name], float(health["latency_ms"]) / 1000)
    yield from (state, checks, failures, latency)
    yield from _counters("musicfs_origin_reads", "origin reads", origins.get("reads") or {})


def _cache(cache: dict[str, Any]) -> Iterator[Metric]:
    nested = ("counters", "reader")
    for key, value in sorted(cache.items()):
        number = _number(value)
        if key not in nested and number is not None:
            yield _gauge(f"musicfs_cache_{key}", f"chunk cache {key}", number)
    yield _gauge(
        "musicfs_cache_mode", "1 for the cache's mode", 1.0, {"mode": str(cache.get("mode"))}
    )
    yield from _counters("musicfs_cache", "chunk cache", cache.get("counters") or {})
    yield from _counters("musicfs_reader", "reads through the cache", cache.get("reader") or {})


def _sync(sync: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("musicfs_sync_running", "1 while a sync runs", float(bool(sync.get("running"))))
    finished = CounterMetricFamily("musicfs_sync_finished", "syncs finished")
    finished.add_metric([], float(sync.get("finished") or 0))
    yield finished
    last: dict[str, GaugeMetricFamily] = {}
    for origin, figures in sorted((sync.get("last") or {}).items()):
        for key, value in sorted(figures.items()):
            number = _number(value)
            if number is None:
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
    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            status = self.snapshot()
        except Exception as exc:  # the loop is gone or wedged: say so, don't 500
            log.warning("metrics: no status snapshot (%s)", exc)
            yield _gauge("musicfs_up", "1 while the daemon answers", 0.0)
            return
        yield from families(status)


class MetricsServer:
    """prometheus-client's HTTP server on ``settings.address``, in a daemon thread."""

    def __init__(self, settings: MetricsSettings, snapshot: Callable[[], dict[str, Any]]):
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(snapshot))
        self._server: Any = None
        self._thread: threading.Thread | None = None

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
