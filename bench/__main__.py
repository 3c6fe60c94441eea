"""``python -m bench [name...]``: run every registered scenario (``bench/scenarios.py``,
then any other ``bench/bench_*.py``) or the named ones (``cache`` and ``bench_cache`` both
name ``bench/bench_cache.py``), save and print their reports, then rebuild
``docs/benchmarks.md`` and its plots from the saved reports (``--no-page``: don't;
``--page``: only that, measuring nothing).

``main()`` may return a ``bench.Report`` (saved as JSON + markdown and printed), a plain
dict or list (saved as JSON), or nothing (the module reported by itself)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback

from bench import BENCH_DIR, RESULTS_DIR, Report, environment, page
from bench.scenarios import SCENARIOS


def discover() -> list[str]:
    """Registered scenarios in page order, then unregistered modules by name."""
    found = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    registered = [f"bench_{n}" for n in SCENARIOS if f"bench_{n}" in found]
    return registered + [n for n in found if n not in registered]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: {discover()})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--page", action="store_true", help="only rebuild docs/benchmarks.md")
    parser.add_argument("--no-page", action="store_true", help="don't rebuild the page")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    if args.page:
        print(f"wrote {page.write(RESULTS_DIR, available, _command(argv))}")
        return 0
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in args.names] or available
    unknown = [n for n in wanted if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted:
        print(f"\n## {name}\n", flush=True)
        # Taken before the run: the load it started under and the code it measured, not
        # whatever was checked out by the time it finished.
        started = environment()
        try:
            module = importlib.import_module(f"bench.{name}")
            report = module.main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        except SystemExit as exc:  # a standalone main() may exit with its status
            if exc.code not in (0, None):
                failed.append(name)
            continue
        if isinstance(report, Report):
            report.environment = {**report.environment, **started}
            path = report.save()
            print(report.markdown())
            print(f"\nsaved {path}", flush=True)
        elif isinstance(report, dict | list):
            # A standalone bench's own figures: kept as they are, with the machine's details.
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"{name.removeprefix('bench_')}-latest.json"
            data = {"results": report, "environment": started}
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
            print(f"\nsaved {path}", flush=True)
    if not args.no_page:
        print(f"\nwrote {page.write(RESULTS_DIR, available, _command(argv))}", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _command(argv: list[str] | None) -> str:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return " ".join(["make bench", *([f"BENCH_ARGS='{' '.join(args)}'"] if args else [])])


if __name__ == "__main__":
    sys.exit(main())
