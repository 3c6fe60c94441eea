"""Settings: TOML file + command-line overrides -> one validated, typed ``Settings``.

The components own their settings types (``origins.settings``, ``cache.settings``,
``fuse_settings``); this module parses the file and assembles them. Imports flow one way:
no component imports this module (tests/unit/test_layering.py holds that).

Every mistake in a config file is reported once, naming the file, the line and the key,
and the command exits with status 2.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from musicfs.cache.settings import CacheSettings
from musicfs.catalog.naming import Template, TemplateError
from musicfs.fuse.settings import FUSE_KERNEL_BACKGROUND, FUSE_SPARE_WORKERS, FuseSettings
from musicfs.library.settings import LibrarySettings
from musicfs.origins.settings import SFTP_TRANSPORTS, OriginSettings, OriginTimeouts
from musicfs.origins.urls import OriginURLError, default_name, validate_url
from musicfs.pins.settings import PinSettings
from musicfs.service.metrics_settings import MetricsSettings, parse_listen

__all__ = [
    "EXIT_CONFIG",
    "FUSE_KERNEL_BACKGROUND",
    "FUSE_SPARE_WORKERS",
    "CacheSettings",
    "ConfigError",
    "FuseSettings",
    "LibrarySettings",
    "MetricsSettings",
    "OriginSettings",
    "OriginTimeouts",
    "PinSettings",
    "Settings",
    "finish",
    "load_config",
    "parse_duration",
    "parse_size",
    "settings_from_dict",
    "with_overrides",
]

EXIT_CONFIG = 2

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is wrong. ``str()`` is the whole message for the user."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ):
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line else f"{file}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.file, self.line, self.key = file, line, key


# -- value parsers ---------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from 1048576, "512M", "10GiB", "1.5G" (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 10G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            scale = 1024 ** " kmgt".index(m.group(2).lower() or " ")
            return int(float(m.group(1)) * scale)
    raise ValueError(f"expected a size such as 512M or 10G, got {value!r}")


def parse_duration(value: Any) -> float:
    """Seconds from 5, 2.5, "500ms", "10s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s or 500ms")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            unit = (m.group(2) or "s").lower()
            return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    raise ValueError(f"expected a duration such as 10s or 500ms, got {value!r}")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _path(value: Any) -> Path:
    return Path(_str(value)).expanduser()


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of at least 0, got {value!r}")
    return value


def _level(value: Any) -> str:
    text = _str(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warning, error")
    return text


def _template(value: Any) -> str:
    text = _str(value)
    try:
        Template(text)
    except TemplateError as exc:
        raise ValueError(str(exc)) from exc
    return text


# -- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mountpoint: Path | None = None
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    runtime_dir: Path | None = None
    log_level: str = "info"
    origins: tuple[OriginSettings, ...] = ()
    library: LibrarySettings = field(default_factory=LibrarySettings)
    fuse: FuseSettings = field(default_factory=FuseSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    timeouts: OriginTimeouts = field(default_factory=OriginTimeouts)
    pins: PinSettings = field(default_factory=PinSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: Path | None = None  # the config file, for messages

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.sqlite"

    @property
    def search_dir(self) -> Path:
        return self.state_dir / "search"

    @property
    def run_dir(self) -> Path:
        return self.runtime_dir or default_runtime_dir(self.state_dir)


def _env_dir(systemd_var: str, xdg_var: str, fallback: str) -> Path:
    if os.environ.get(systemd_var):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(os.environ[systemd_var].split(":")[0])
    base = os.environ.get(xdg_var) or os.path.expanduser(fallback)
    return Path(base) / "musicfs"


def default_state_dir() -> Path:
    return _env_dir("STATE_DIRECTORY", "XDG_STATE_HOME", "~/.local/state")


def default_cache_dir() -> Path:
    return _env_dir("CACHE_DIRECTORY", "XDG_CACHE_HOME", "~/.cache")


def default_runtime_dir(state_dir: Path) -> Path:
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "musicfs"
    return state_dir / "run"


Parser = Callable[[Any], Any]

_TOP: dict[str, Parser] = {
    "mountpoint": _path,
    "state_dir": _path,
    "cache_dir": _path,
    "runtime_dir": _path,
    "log_level": _level,
}
_TABLES: dict[str, tuple[type, dict[str, Parser]]] = {
    "library": (
        LibrarySettings,
        {
            "template": _template,
            "scan_interval": parse_duration,
            "scan_parallel": _positive_int,
            "scan_batch": _positive_int,
        },
    ),
    "fuse": (
        FuseSettings,
        {
            "allow_other": _bool,
            "read_deadline": parse_duration,
            "attr_timeout": parse_duration,
            "max_tasks": _positive_int,
            "max_background": _non_negative_int,
            "read_ahead_kb": _non_negative_int,
            "drain_timeout": parse_duration,
        },
    ),
    "cache": (
        CacheSettings,
        {
            "max_size": parse_size,
            "min_free": parse_size,
            "chunk_size": parse_size,
            "memory": parse_size,
            "retry_interval": parse_duration,
        },
    ),
    "pins": (PinSettings, {"parallel": _positive_int, "max_rate": parse_size}),
    "metrics": (MetricsSettings, {"listen": parse_listen}),
    "timeouts": (
        OriginTimeouts,
        {
            "operation": parse_duration,
            "health_interval": parse_duration,
            "health_max_backoff": parse_duration,
            "hedge_after": parse_duration,
        },
    ),
}


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value


def _sftp_transport(value: Any) -> str:
    if _str(value) not in SFTP_TRANSPORTS:
        raise ValueError(f"expected one of {', '.join(SFTP_TRANSPORTS)}, got {value!r}")
    return str(value)


_ORIGIN: dict[str, Parser] = {
    "url": _str,
    "name": _str,
    "priority": _int,
    "key_file": _path,
    "known_hosts": _path,
    "trust_on_first_use": _bool,
    "connections": _positive_int,
    "config_file": _path,
    "transport": _sftp_transport,
    "endpoint": _str,
    "region": _str,
    "secure": _bool,
    "credentials_file": _path,
    "profile": _str,
    "ca_file": _path,
    "streams": _non_negative_int,
    "stream_after": parse_size,
    "stream_idle": parse_duration,
}


def _locate(text: str, table: str | None, key: str, index: int = 0) -> int | None:
    """Best-effort line number of ``key`` inside ``[table]`` (or ``[[table]]`` #index)."""
    current: str | None = None
    seen: dict[str, int] = {}
    header_line: int | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", line) or re.match(r"^\[\s*([^\]]+?)\s*\]", line)
        if m:
            current = m.group(1)
            seen[current] = seen.get(current, -1) + 1
            if current == table and seen[current] == index and key == "":
                return lineno
            if current == table and seen[current] == index:
                header_line = lineno
            continue
        in_place = current == table and (table is None or seen.get(table) == index)
        if in_place and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", line):
            return lineno
        if (
            table is not None
            and table == key
            and current is None
            and re.match(rf"^{re.escape(key)}\s*=", line)
        ):
            return lineno
    return header_line


def _parse_table(
    raw: Any,
    parsers: Mapping[str, Parser],
    *,
    file: Path | None,
    text: str,
    table: str | None,
    index: int = 0,
) -> dict[str, Any]:
    label = f"[{table}]" if table else "top level"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label} must be a table", file=file, line=_locate(text, None, table or ""), key=table
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{table}.{key}" if table else key
        if key not in parsers:
            known = ", ".join(sorted(parsers))
            raise ConfigError(
                f"unknown key (known in {label}: {known})",
                file=file,
                line=_locate(text, table, key, index),
                key=name,
            )
        try:
            out[key] = parsers[key](value)
        except ValueError as exc:
            raise ConfigError(
                str(exc), file=file, line=_locate(text, table, key, index), key=name
            ) from exc
    return out


def load_config(path: Path) -> Settings:
    """Read and validate a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=path) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            f"not valid TOML: {exc}", file=path, line=int(m.group(1)) if m else None
        ) from None
    return settings_from_dict(raw, file=path, text=text)


def settings_from_dict(
    raw: dict[str, Any], *, file: Path | None = None, text: str = ""
) -> Settings:
    top_parsers: dict[str, Parser] = dict(_TOP)
    top_parsers.update({name: (lambda v: v) for name in _TABLES})
    top_parsers["origin"] = lambda v: v
    values = _parse_table(raw, top_parsers, file=file, text=text, table=None)
    kwargs: dict[str, Any] = {k: v for k, v in values.items() if k in _TOP}
    for name, (cls, parsers) in _TABLES.items():
        if name in values:
            kwargs[name] = cls(
                **_parse_table(values[name], parsers, file=file, text=text, table=name)
            )
    if "origin" in values:
        items = values["origin"]
        if not isinstance(items, list):
            raise ConfigError(
                "use [[origin]] tables, one per origin",
                file=file,
                line=_locate(text, None, "origin"),
                key="origin",
            )
        origins = []
        for i, item in enumerate(items):
            parsed = _parse_table(item, _ORIGIN, file=file, text=text, table="origin", index=i)
            if "url" not in parsed:
                raise ConfigError(
                    "every [[origin]] needs a url",
                    file=file,
                    line=_locate(text, "origin", "", i),
                    key="origin.url",
                )
            origins.append(OriginSettings(**parsed))
        kwargs["origins"] = tuple(origins)
    kwargs["source"] = file
    settings = finish(Settings(**kwargs), text=text)
    _warn_about(settings)
    return settings


def finish(settings: Settings, *, text: str = "", origins_from_flags: bool = False) -> Settings:
    """Fill derived defaults and check cross-field rules. ``text`` (the file's) lets an
    error name its line; origins given as ``--origin`` are named as such."""

    def error(message: str, key: str, index: int = 0) -> ConfigError:
        table, _, name = key.rpartition(".")
        if table == "origin" and origins_from_flags:
            return ConfigError(message, key=f"--origin {settings.origins[index].url}")
        line = _locate(text, table or None, name, index) if text else None
        return ConfigError(message, file=settings.source, line=line, key=key)

    origins = []
    names: set[str] = set()
    for i, o in enumerate(settings.origins):
        try:
            validate_url(o.url)
        except OriginURLError as exc:
            raise error(str(exc), "origin.url", i) from None
        name = o.name or _default_origin_name(o.url, i)
        if name in names:
            raise error(
                f"two origins are named {name!r}; give each a unique name",
                "origin.name" if o.name else "origin.url",
                i,
            )
        names.add(name)
        origins.append(replace(o, name=name))
    for key, value in (
        ("fuse.read_deadline", settings.fuse.read_deadline),
        ("timeouts.operation", settings.timeouts.operation),
        ("timeouts.health_interval", settings.timeouts.health_interval),
        ("timeouts.hedge_after", settings.timeouts.hedge_after),
        ("cache.retry_interval", settings.cache.retry_interval),
    ):
        if value <= 0:
            raise error("must be greater than zero", key)
    if settings.timeouts.health_max_backoff < settings.timeouts.health_interval:
        raise error(
            "must not be shorter than timeouts.health_interval", "timeouts.health_max_backoff"
        )
    fuse = settings.fuse
    if fuse.max_background > 65535:
        raise error("must be at most 65535 (the kernel's limit)", "fuse.max_background")
    cache = settings.cache
    if cache.chunk_size < 4096 or cache.chunk_size > 64 * 1024 * 1024:
        raise error("must be between 4K and 64M", "cache.chunk_size")
    if cache.max_size < cache.chunk_size:
        raise error(
            f"{cache.max_size} bytes is less than one chunk ({cache.chunk_size} bytes): the "
            "cache could store nothing (sizes take K/M/G/T, e.g. 10G)",
            "cache.max_size",
        )
    return replace(settings, origins=tuple(origins))


def _warn_about(settings: Settings) -> None:
    """Accepted, but probably not what was meant: say what it will do."""
    operation, deadline = settings.timeouts.operation, settings.fuse.read_deadline
    if operation > deadline:
        log.warning(
            "%s: timeouts.operation (%gs) is longer than fuse.read_deadline (%gs): a slow "
            "origin is cut off by the read deadline (EIO) before its own timeout, so a read "
            "never fails over to another origin after it",
            settings.source,
            operation,
            deadline,
        )


def _default_origin_name(url: str, index: int) -> str:

    return default_name(url, index)


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """Command-line flags win over the file. ``None`` means "not given"."""
    changes = {k: v for k, v in overrides.items() if v is not None and k != "origin_urls"}
    urls = overrides.get("origin_urls")
    if urls:
        changes["origins"] = tuple(OriginSettings(url=u) for u in urls)
    known = {f.name for f in fields(Settings)}
    unknown = set(changes) - known
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    return finish(replace(settings, **changes), origins_from_flags=bool(urls))
