"""Layer 1: the Prometheus exposition of the components' statistics and the status
report, the ``[metrics]`` settings, and the endpoint serving a scrape over a real socket."""

from __future__ import annotations

import urllib.request
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from musicfs.cache.modes import CacheMode
from musicfs.cache.reader import ReaderCounters, ReaderStatistics
from musicfs.cache.store import StoreCounters, StoreStatistics
from musicfs.config import ConfigError, load_config
from musicfs.fuse.operations import FuseCounters
from musicfs.origins.health import Mode
from musicfs.origins.pool import PoolCounters, PoolStatistics
from musicfs.service.fuse_session import FuseStatistics
from musicfs.service.metrics import MetricsServer, MetricsSettings, Snapshot, StatusCollector

STATUS: dict[str, Any] = {
    "state": "serving",
    "mode": "degraded",
    "uptime": 12.5,
    "tracks": 42,
    "origins": {
        "mode": "degraded",
        "origins": {
            "nas": {
                "state": "unhealthy",
                "checks": 9,
                "consecutive_failures": 3,
                "latency_ms": None,
            },
            "s3": {"state": "healthy", "checks": 4, "consecutive_failures": 0, "latency_ms": 2.5},
        },
    },
    "cache": {"dir": "/var/cache/musicfs"},
    "sync": {
        "running": None,
        "finished": 2,
        "errors": {},
        "last": {"nas": {"listed": 42, "scanned": 1, "seconds": 0.5}},
    },
    "tasks": {"sync": {"state": "running", "restarts": 1, "failures": 1}},
}
STORE = StoreStatistics(
    mode=CacheMode.NORMAL,
    reason=None,
    serves_cached=False,
    chunks=3,
    used_bytes=3145728,
    max_size=10737418240,
    min_free=1 << 30,
    chunk_size=1 << 20,
    pinned=0,
    protected_bytes=0,
    counters=StoreCounters(hits=4, misses=3, read_seconds=0.25),
)
SNAPSHOT = Snapshot(
    statistics={
        "musicfs_fuse": FuseStatistics(
            FuseCounters(
                reads=7,
                read_bytes=917504,
                read_errors=1,
                inflight=2,
                by_op={"lookup": 5, "read": 7},
            ),
            worker_restarts=0,
            max_background=256,
        ),
        "musicfs_reader": ReaderStatistics(
            memory_bytes=1 << 20,
            disk_stalled=False,
            counters=ReaderCounters(origin_fetches=3, origin_bytes=3145728),
            store=STORE,
        ),
        "musicfs_pool": PoolStatistics(Mode.DEGRADED, PoolCounters(reads=6, failovers=2)),
    },
    status=STATUS,
)


def scrape(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_every_statistic_and_status_figure_is_exposed_with_its_value() -> None:
    got = scrape(SNAPSHOT)
    assert got[("musicfs_up", ())] == 1
    assert got[("musicfs_state", (("mode", "degraded"), ("state", "serving")))] == 1
    assert got[("musicfs_tracks", ())] == 42
    assert got[("musicfs_uptime_seconds", ())] == 12.5
    # FUSE session statistics: counters are totals, levels are gauges.
    assert got[("musicfs_fuse_reads_total", ())] == 7
    assert got[("musicfs_fuse_read_errors_total", ())] == 1
    assert got[("musicfs_fuse_inflight", ())] == 2
    assert got[("musicfs_fuse_requests_total", (("op", "lookup"),))] == 5
    assert got[("musicfs_fuse_worker_restarts_total", ())] == 0
    assert got[("musicfs_fuse_max_background", ())] == 256
    # Reader statistics, with the chunk store's nested under musicfs_cache.
    assert got[("musicfs_reader_origin_bytes_total", ())] == 3145728
    assert got[("musicfs_reader_memory_bytes", ())] == 1 << 20
    assert got[("musicfs_reader_disk_stalled", ())] == 0
    assert got[("musicfs_cache_chunks", ())] == 3
    assert got[("musicfs_cache_mode", (("mode", "normal"),))] == 1
    assert got[("musicfs_cache_hits_total", ())] == 4
    assert got[("musicfs_cache_read_seconds_total", ())] == 0.25
    # Pool statistics.
    assert got[("musicfs_pool_mode", (("mode", "degraded"),))] == 1
    assert got[("musicfs_pool_failovers_total", ())] == 2
    # From the status report: health, syncs, tasks.
    assert got[("musicfs_origin_state", (("origin", "nas"), ("state", "unhealthy")))] == 1
    assert got[("musicfs_origin_consecutive_failures", (("origin", "nas"),))] == 3
    assert got[("musicfs_origin_latency_seconds", (("origin", "s3"),))] == 0.0025
    assert ("musicfs_origin_latency_seconds", (("origin", "nas"),)) not in got
    assert got[("musicfs_sync_finished_total", ())] == 2
    assert got[("musicfs_sync_running", ())] == 0
    assert got[("musicfs_sync_last_listed", (("origin", "nas"),))] == 42
    assert got[("musicfs_task_state", (("state", "running"), ("task", "sync")))] == 1
    assert got[("musicfs_task_restarts_total", (("task", "sync"),))] == 1
    # Strings that are not states (paths, reasons) are not metrics.
    assert not [name for name, _ in got if "dir" in name or "reason" in name]


def test_every_counter_a_component_defines_is_exported() -> None:
    """A counter added to a component's counters dataclass needs no exporter change."""
    names = {name for name, _ in scrape(SNAPSHOT)}
    for prefix, counters in (
        ("musicfs_fuse", FuseCounters()),
        ("musicfs_reader", ReaderCounters()),
        ("musicfs_cache", StoreCounters()),
        ("musicfs_pool", PoolCounters()),
    ):
        for f in fields(counters):
            expected = {
                f"{prefix}_{f.name}",
                f"{prefix}_{f.name}_total",
                f"{prefix}_requests_total",
            }
            assert names & expected, f"{prefix}.{f.name} not exported"


def test_a_daemon_that_cannot_answer_is_reported_down() -> None:
    def wedged() -> dict[str, Any]:
        raise RuntimeError("event loop gone")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(wedged))
    text = generate_latest(registry).decode()
    assert "musicfs_up 0.0" in text


def test_metrics_are_off_by_default_and_a_bare_port_is_loopback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('mountpoint = "/mnt/m"\n')
    assert load_config(cfg).metrics.address is None
    cfg.write_text('mountpoint = "/mnt/m"\n[metrics]\nlisten = "9101"\n')
    assert load_config(cfg).metrics.address == ("127.0.0.1", 9101)
    cfg.write_text('mountpoint = "/mnt/m"\n[metrics]\nlisten = "0.0.0.0:9200"\n')
    assert load_config(cfg).metrics.address == ("0.0.0.0", 9200)
    assert MetricsSettings("[::1]:9101").address == ("::1", 9101)


@pytest.mark.parametrize("bad", ['"localhost"', '"host:99999"', "9101", '"a:b"'])
def test_a_bad_listen_address_is_a_config_error(tmp_path: Path, bad: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'mountpoint = "/mnt/m"\n[metrics]\nlisten = {bad}\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen|listen"):
        load_config(cfg)


def test_the_endpoint_serves_a_scrape_and_stops() -> None:
    server = MetricsServer(MetricsSettings("127.0.0.1:0"), lambda: SNAPSHOT)
    assert server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert "musicfs_tracks 42.0" in body
    finally:
        server.stop()


def test_an_address_in_use_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    first = MetricsServer(MetricsSettings("127.0.0.1:0"), lambda: SNAPSHOT)
    assert first.start()
    try:
        second = MetricsServer(MetricsSettings(f"127.0.0.1:{first.port}"), lambda: SNAPSHOT)
        assert not second.start()
        assert "cannot listen on 127.0.0.1" in caplog.text
    finally:
        first.stop()
