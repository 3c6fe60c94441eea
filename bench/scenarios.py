"""The scenarios ``python -m bench`` runs, in the order docs/benchmarks.md shows them.

Registering a benchmark is one line here (its module is ``bench/bench_<name>.py`` with a
``main()`` returning a ``bench.Report``). A ``bench_*.py`` not listed still runs, after
these, and is shown last."""

SCENARIOS = (
    "remote",  # MusicFS vs native disk, sshfs, rclone, the minio client (the headline)
    "cold",  # the cold path over SFTP: scanner, first sync, track start vs sshfs
    "library",  # 10,000 generated tracks on a local origin: scan, ls -R, reads, RSS
    "cache",  # the chunk cache: hits, misses, verification, time to first byte
    "storm",  # cached reads while 100 uncached reads hang on the origin
    "pins",  # musicfs pin filling the cache vs a cold read and sshfs
    "offline",  # played music kept through a scan (vs the old LRU); a blackhole vs sshfs
    "scale",  # 100,000 generated tracks vs native and sshfs; a 1,000,000-track catalog
)
