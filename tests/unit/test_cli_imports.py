"""The command line starts fast: importing ``musicfs.cli`` and building its parser (what
every ``musicfs`` command does first) loads none of the daemon's heavy modules. ``musicfs
search`` beside a daemon then needs nothing more (tests/process/test_search_daemon.py)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "apsw",
    "asyncssh",
    "lmdb",
    "minio",
    "mutagen",
    "prometheus_client",
    "pyfuse3",
    "rich",
    "tantivy",
    "trio",
)


def loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    modules = json.loads(out.splitlines()[-1])
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def test_the_cli_and_its_parser_import_none_of_the_daemons_modules() -> None:
    assert loaded_after("import musicfs.cli\nmusicfs.cli.build_parser()") == []


def test_reading_a_config_imports_none_of_them_either() -> None:
    code = "from musicfs.config import Settings, load_config\nSettings()"
    assert loaded_after(code) == []


def test_the_tags_record_comes_without_mutagen() -> None:
    assert loaded_after("from musicfs.catalog.model import Track") == []
