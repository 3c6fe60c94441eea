"""Layer 3: the pins benchmark still runs (two small files, one run; the figures are not
checked beyond being measured against their baselines)."""

from __future__ import annotations

from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse
from tests.support.netns import require_root_network


def test_pins_bench_produces_every_figure() -> None:
    require_fuse()
    require_root_network()
    env = {
        "MUSICFS_BENCH_PINS_FILES": "2",
        "MUSICFS_BENCH_PINS_MB": "2",
        "MUSICFS_BENCH_PINS_REPEATS": "1",
    }
    figures = rows(run_bench("bench_pins", env))
    pin = figures["pin throughput (whole library)"]
    assert pin["value"] > 0 and pin["baseline"] > 0
    assert figures["MusicFS cold sequential read"]["baseline_name"] == "sshfs"
