"""Layer 3: ``python -m bench scale`` still runs (tiny sizes; sshd in a namespace is the
sshfs peer). The figures are not checked, only that every measurement is produced."""

from __future__ import annotations

from pathlib import Path

from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse
from tests.support.netns import require_root_network


def test_bench_scale_measures_every_row(tmp_path: Path) -> None:
    require_fuse()
    require_root_network()
    env = {
        "MUSICFS_BENCH_SCALE_TRACKS": "300",
        "MUSICFS_BENCH_SCALE_BIG": "600",
        "MUSICFS_BENCH_REPEAT": "1",
        "MUSICFS_BENCH_DIR": str(tmp_path / "cache"),
        "MUSICFS_BENCH_DROP_CACHES": "0",
    }
    report = run_bench("bench_scale", env, timeout=300)
    metrics = rows(report)
    assert metrics["fresh scan"]["baseline"] > 0
    assert metrics["`ls -R` warm"]["baseline"] > 0
    assert "sshfs" in metrics["`find -type f` warm"]["note"]
    assert metrics["lookup+getattr of unseen files (`stat`) p99"]["value"] > 0
    assert metrics["search p99, answered by the daemon"]["value"] > 0
    assert metrics["600: `musicfs mount` until the mount answers"]["value"] > 0
    assert metrics["600: lookup+getattr p99 while 60 changed tracks are published"]["value"] > 0
