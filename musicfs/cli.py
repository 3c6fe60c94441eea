"""Command line: ``musicfs mount | scan | search | status | unmount | fsck | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from musicfs import __version__
from musicfs.config import EXIT_CONFIG, ConfigError, Settings, load_config, with_overrides
from musicfs.private import private_files

log = logging.getLogger("musicfs")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--origin",
        action="append",
        dest="origin_urls",
        metavar="URL",
        help="origin: a folder, file:///path (repeat for several)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="catalog and lock (default: $STATE_DIRECTORY or ~/.local/state/musicfs)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="chunk cache (default: $CACHE_DIRECTORY or ~/.cache/musicfs)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicfs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"musicfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    mount = sub.add_parser("mount", help="mount the library (runs until SIGINT/SIGTERM)")
    _common(mount)
    mount.add_argument("mountpoint", type=Path, nargs="?", help="an empty folder")

    scan = sub.add_parser("scan", help="update the catalog from the origins without mounting")
    _common(scan)
    scan.add_argument(
        "--prune",
        action="store_true",
        help="remove tracks even when an origin lists none (or under half) of the tracks it "
        "had; without it such a listing is taken for an unmounted disk and removes nothing",
    )

    search = sub.add_parser(
        "search",
        help="print the mounted paths of tracks matching a query (no daemon needed)",
        description="All words must match (artist, albumartist, album, title, genre, year, "
        "path); `artist:aurora`, `year:[2000 TO 2010]`, quotes and OR work as in tantivy. "
        "Exit status 0 if something matched, 1 if nothing did.",
    )
    search.add_argument("--config", type=Path, help="TOML config file")
    search.add_argument("--state-dir", type=Path, help="where the catalog and the index live")
    search.add_argument("--limit", type=int, default=100, help="at most this many results")
    search.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    search.add_argument("query", nargs="+", help="words or a tantivy query")

    status = sub.add_parser("status", help="what a running daemon is doing")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("mountpoint", type=Path, nargs="?", help="the daemon's mount point")

    unmount = sub.add_parser("unmount", help="ask the daemon serving MOUNTPOINT to stop")
    _common(unmount)
    unmount.add_argument(
        "mountpoint", type=Path, nargs="?", help="the daemon's mount point (default: the config's)"
    )
    unmount.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the unmount"
    )

    fsck = sub.add_parser(
        "fsck", help="verify the catalog and every cached chunk (changes nothing without --repair)"
    )
    _common(fsck)
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="repair the cache: rebuild its index, quarantine bad chunks (daemon stopped)",
    )

    from musicfs.pins.parsers import add_parsers as add_pin_parsers

    add_pin_parsers(sub, _common)

    demo = sub.add_parser("demo", help="build a small tagged demo library and mount it")
    demo.add_argument(
        "--dir", type=Path, help="where to put the demo (default: ~/.local/share/musicfs-demo)"
    )
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def resolve_settings(args: argparse.Namespace) -> Settings:
    settings = load_config(args.config) if getattr(args, "config", None) else Settings()
    return with_overrides(
        settings,
        origin_urls=getattr(args, "origin_urls", None),
        state_dir=getattr(args, "state_dir", None),
        cache_dir=getattr(args, "cache_dir", None),
        mountpoint=getattr(args, "mountpoint", None),
        log_level=getattr(args, "log_level", None),
    )


class _ProgressBar:
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_logged = -1

    def __call__(self, done: int, total: int) -> None:
        if total == 0:
            return
        pct = done * 100 // total
        if self.tty:
            width = 30
            filled = width * done // total
            sys.stderr.write(
                f"\rscanning [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({pct}%)"
            )
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif pct // 10 != self.last_logged // 10 or done == total:
            self.last_logged = pct
            log.info("scanning: %d/%d (%d%%)", done, total, pct)


async def _scan(settings: Settings, prune: bool = False) -> int:
    import trio

    from musicfs.catalog.integrity import open_catalog
    from musicfs.library.coordinator import SyncCoordinator, open_pool

    catalog, _ = await trio.to_thread.run_sync(open_catalog, settings.catalog_path)
    library = SyncCoordinator(settings, catalog, open_pool(settings))
    try:
        ok = await library.sync(progress=_ProgressBar(), prune=prune)
        count = await catalog.run(catalog.track_count)
        print(f"{count} tracks in the catalog ({settings.catalog_path})")
        return 0 if ok else 1
    finally:
        await library.pool.aclose()
        catalog.close()


def cmd_scan(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    if not settings.origins:
        raise ConfigError("no origin given (use --origin PATH or [[origin]] in the config)")
    from musicfs.private import tighten

    tighten(settings.state_dir)
    import trio

    return trio.run(_scan, settings, args.prune)


def cmd_search(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    query = " ".join(args.query)
    paths = _search_in_daemon(settings, query, args.limit)
    if paths is None:  # no daemon serves this catalog: read the index here
        from musicfs.search import QueryError, search_library

        try:
            hits = search_library(settings.state_dir, settings.library.template, query, args.limit)
        except (QueryError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from None
        paths = [hit.path for hit in hits]
    # Under the mount point when the config names it; else relative to the mount (no
    # leading '/', which would read as a path on this machine).
    root = str(settings.mountpoint).rstrip("/") + "/" if settings.mountpoint is not None else ""
    try:
        for path in paths:
            print(root + path.lstrip("/"))
        sys.stdout.flush()
    except BrokenPipeError:
        # `musicfs search ... | head -1`: the reader has what it wanted. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if paths else 1


# How long a search waits for the daemon's answer before reading the index itself (the
# daemon answers in milliseconds, unless its index is busy with a large update).
DAEMON_SEARCH_WAIT = 2.0


def _search_in_daemon(settings: Settings, query: str, limit: int) -> list[str] | None:
    """The daemon serving this catalog answers from its open index: the command then
    imports no index, catalog or trio, and starts in a few milliseconds. None when no
    daemon of this catalog answers."""
    from musicfs.service.control import ControlError, request, socket_path

    if settings.mountpoint is not None:
        sockets = [socket_path(settings.run_dir, settings.mountpoint)]
    else:
        sockets = sorted(settings.run_dir.glob("control-*.sock"))
    for path in sockets:
        try:
            reply = request(path, "search", DAEMON_SEARCH_WAIT, query=query, limit=limit)
        except ControlError:
            continue  # gone, busy, or too old to know ``search``
        if reply.get("catalog") != os.path.abspath(settings.catalog_path):
            continue  # another library's daemon sharing the runtime directory
        if "query_error" in reply:
            raise ConfigError(str(reply["query_error"]))
        return [str(p) for p in reply.get("paths", [])]
    return None


def cmd_mount(args: argparse.Namespace) -> int:
    from musicfs.daemon import run_daemon

    settings = resolve_settings(args)
    if settings.mountpoint is None:
        raise ConfigError("no mount point given (argument or `mountpoint` in the config)")
    return run_daemon(settings, reload=lambda: resolve_settings(args))


def cmd_status(args: argparse.Namespace) -> int:
    from musicfs.service.control import ControlError, request

    settings = resolve_settings(args)
    try:
        reply = request(_control_path(settings, _names_state(args)), "status")
    except (ControlError, ConfigError) as exc:
        if args.json:  # a script asked: it gets an answer it can parse
            print(json.dumps({"running": False, "error": str(exc)}, indent=2))
        print(f"musicfs: {exc}", file=sys.stderr)
        return 1
    status = reply["status"]
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(status))
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    import time

    from musicfs.service.control import ControlError, request
    from musicfs.service.mounts import find_mount, is_musicfs, lazy_unmount, probe

    settings = resolve_settings(args)
    mountpoint = settings.mountpoint  # the argument, else the config's
    if mountpoint is None:
        raise ConfigError("no mount point given (argument or `mountpoint` in the config)")
    try:
        reply = request(_control_path(settings, _names_state(args)), "unmount")
    except ControlError as exc:
        entry = find_mount(mountpoint)
        if entry is not None and is_musicfs(entry) and probe(mountpoint, 3.0) != 0:
            lazy_unmount(mountpoint)
            print(f"{mountpoint}: no daemon was serving it; removed the stale mount")
            return 0
        print(f"musicfs: {exc}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if find_mount(mountpoint) is None:
            print(f"{mountpoint}: unmounted (daemon pid {reply.get('pid')})")
            return 0
        time.sleep(0.1)
    print(f"musicfs: {mountpoint} still mounted after {args.timeout:.0f}s", file=sys.stderr)
    return 1


def cmd_fsck(args: argparse.Namespace) -> int:
    from musicfs.fsck import run_fsck

    return run_fsck(resolve_settings(args), repair=args.repair)


def _names_state(args: argparse.Namespace) -> bool:
    """Did the user say which daemon (its --state-dir or --config)?"""
    return bool(getattr(args, "state_dir", None) or getattr(args, "config", None))


def _serves(sock: Path, state_dir: Path) -> bool:
    """Does the daemon listening at ``sock`` serve the library in ``state_dir``?"""
    from musicfs.service.control import ControlError, request

    try:
        status = request(sock, "status").get("status") or {}
    except ControlError:
        return False
    return bool(status.get("state_dir") == os.path.realpath(state_dir))


def _control_path(settings: Settings, names_state: bool) -> Path:
    from musicfs.service import registry
    from musicfs.service.control import socket_path

    if settings.mountpoint is not None:
        own = socket_path(settings.run_dir, settings.mountpoint)
        # Without the daemon's --state-dir/--config the registry knows where it listens.
        return own if own.is_socket() else registry.lookup(settings.mountpoint) or own
    # This state dir's daemon if it has one (a killed one's socket file is no daemon);
    # any the registry knows of only when no state dir or config was named.
    sockets = [s for s in sorted(settings.run_dir.glob("control-*.sock")) if registry.answers(s)]
    if names_state:
        # $XDG_RUNTIME_DIR/musicfs holds every daemon of this user: keep this library's.
        sockets = [s for s in sockets if _serves(s, settings.state_dir)]
    elif not sockets:
        sockets = registry.registered_sockets()
    if len(sockets) == 1:
        return sockets[0]
    where = f"in {settings.run_dir}"
    if not sockets:
        raise ConfigError(f"no running MusicFS found {where}; is --state-dir/--config right?")
    raise ConfigError(f"several MusicFS daemons run {where}; name the mount point")


def format_cache(cache: dict[str, Any]) -> str:
    """One line: mode (and why), size against the limit, and what reads did."""
    mode = cache.get("mode", "?")
    if cache.get("reason"):
        mode += f" ({cache['reason']})"
    if cache.get("serves_cached"):
        mode += ", stored chunks still served read-only"
    if cache.get("disk_stalled"):
        mode += ", cache disk not answering in time (origins asked after 0.25 s)"
    c = cache.get("counters") or {}
    r = cache.get("reader") or {}
    mib = 2**20
    return (
        f"  cache: {mode}, {int(cache.get('used_bytes', 0)) / mib:.0f} of "
        f"{int(cache.get('max_size', 0)) / mib:.0f} MiB in {cache.get('chunks', 0)} chunks; "
        f"hits {c.get('hits', 0)} (+{r.get('memory_hits', 0)} in memory), "
        f"origin fetches {r.get('origin_fetches', 0)}, corrupt {c.get('corrupt', 0)} "
        f"(repaired {r.get('repaired', 0)}), evicted {c.get('evicted', 0)}, "
        f"uncached {r.get('uncached', 0)}"
    )


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"{status['mountpoint']}: {status['state']}, {status['mode']}, "
        f"{status['tracks']} tracks (pid {status['pid']}, up {status['uptime']:.0f}s)"
    ]
    origins = status.get("origins")
    if isinstance(origins, dict):
        # The health monitor keys its origins by name.
        for name, o in (origins.get("origins") or {}).items():
            error = f", last error: {o['last_error']}" if o.get("last_error") else ""
            lines.append(f"  origin {name} ({o.get('url')}): {o.get('state')}{error}")
    cache = status.get("cache")
    if isinstance(cache, dict):
        lines.append(format_cache(cache))
    sync = status.get("sync") or {}
    running = sync.get("running")
    if running:
        lines.append(f"  sync: {running['origin']} {running['done']}/{running['total'] or '?'}")
    else:
        lines.append(f"  sync: idle, {sync.get('finished', 0)} finished")
    for origin, error in (sync.get("errors") or {}).items():
        lines.append(f"  sync error {origin}: {error}")
    for name, task in (status.get("tasks") or {}).items():
        extra = f", last error: {task['last_error']}" if task.get("last_error") else ""
        lines.append(
            f"  task {name} ({task['policy']}): {task['state']}, {task['restarts']} restarts{extra}"
        )
    if isinstance(status.get("pins"), dict):
        from musicfs.pins.commands import format_pins

        lines.append(format_pins(status["pins"]))
    fuse = status.get("fuse")
    if fuse:
        restarts = fuse.get("worker_restarts") or 0
        lines.append(
            f"  reads: {fuse['reads']} ({fuse['read_errors']} errors, "
            f"{fuse['deadline_misses']} past deadline, {fuse['inflight']} in flight)"
            + (f"; FUSE workers restarted {restarts}x for want of memory" if restarts else "")
        )
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from musicfs.config import OriginSettings
    from musicfs.daemon import run_daemon
    from musicfs.demo import build_demo_library

    base = (
        args.dir
        or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "musicfs-demo"
    )
    library_dir = base / "library"
    mountpoint = base / "mnt"
    count = build_demo_library(library_dir)
    mountpoint.mkdir(parents=True, exist_ok=True)
    settings = with_overrides(
        Settings(),
        state_dir=base / "state",
        cache_dir=base / "cache",
        mountpoint=mountpoint,
        log_level=args.log_level,
    )
    settings = with_overrides(
        settings, origins=(OriginSettings(url=str(library_dir), name="demo"),)
    )
    import trio

    trio.run(_scan, settings)
    print(
        f"\nDemo library: {count} files in {library_dir}\n"
        f"Mounted at:   {mountpoint}\n"
        f"Try:          ls -R '{mountpoint}'   (Ctrl-C here to unmount)\n",
        flush=True,
    )
    return run_daemon(settings)


def cmd_pin(args: argparse.Namespace) -> int:
    """``pin``, ``unpin`` and ``pins`` (musicfs/pins/commands.py)."""
    from musicfs.pins import commands as pin_commands

    commands = {
        "pin": pin_commands.cmd_pin,
        "unpin": pin_commands.cmd_unpin,
        "pins": pin_commands.cmd_pins,
    }
    return commands[args.command](args, resolve_settings(args))


# Errors a command reports in one line (exit status 2) rather than with a traceback, by
# module: only a command that loaded the module can raise them, and ``musicfs search``
# must not pay for importing the daemon's start-up, the catalog and trio to name them.
_ONE_LINE_ERRORS = (
    ("musicfs.service.mounts", "MountpointError"),
    ("musicfs.service.startup", "StartupError"),
    ("musicfs.catalog.schema", "SchemaTooNew"),
)


def _one_line_error(exc: Exception) -> bool:
    if isinstance(exc, ConfigError):
        return True
    for module, name in _ONE_LINE_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    from musicfs.service.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", None) or "info")
    commands = {
        "mount": cmd_mount,
        "scan": cmd_scan,
        "search": cmd_search,
        "status": cmd_status,
        "unmount": cmd_unmount,
        "fsck": cmd_fsck,
        "demo": cmd_demo,
        "pin": cmd_pin,
        "unpin": cmd_pin,
        "pins": cmd_pin,
    }
    try:
        with private_files():
            return commands[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _one_line_error(exc):
            raise
        print(f"musicfs: {exc}", file=sys.stderr)
        return EXIT_CONFIG
