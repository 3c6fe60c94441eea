"""`musicfs demo` finds its audio fixtures in a checkout, a pip install and a Nix $out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from musicfs import demo
from musicfs.demo import FORMATS, fixtures_dir


def fixtures_at(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for fmt in FORMATS:
        (folder / f"tone.{fmt}").write_bytes(b"")
    return folder


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSICFS_FIXTURES", raising=False)


def test_the_musicfs_under_test_finds_its_fixtures() -> None:
    """From the checkout, or (the Nix sandbox imitation's importlib run) installed."""
    found = fixtures_dir()
    assert all((found / f"tone.{fmt}").is_file() for fmt in FORMATS), found


def test_nix_layout_package_prefix_differs_from_the_interpreters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nix" / "store" / "abc-musicfs-0.1.0"
    monkeypatch.setattr(
        demo, "_PACKAGE_DIR", out / "lib" / "python3.12" / "site-packages" / "musicfs"
    )
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "nix" / "store" / "def-python3-env"))
    installed = fixtures_at(out / "share" / "musicfs" / "fixtures")
    assert fixtures_dir() == installed


def test_pip_layout_fixtures_under_the_interpreters_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    # A package found elsewhere on sys.path (PYTHONPATH): the venv's data files still count.
    monkeypatch.setattr(demo, "_PACKAGE_DIR", tmp_path / "elsewhere" / "musicfs")
    monkeypatch.setattr(sys, "prefix", str(venv))
    installed = fixtures_at(venv / "share" / "musicfs" / "fixtures")
    assert fixtures_dir() == installed


def test_an_override_wins_and_nothing_found_names_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "_PACKAGE_DIR", tmp_path / "pkg" / "musicfs")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    with pytest.raises(FileNotFoundError) as missing:
        fixtures_dir()
    assert str(tmp_path / "pkg" / "tests" / "fixtures") in str(missing.value)
    assert str(tmp_path / "prefix" / "share" / "musicfs" / "fixtures") in str(missing.value)
    monkeypatch.setenv("MUSICFS_FIXTURES", str(tmp_path / "mine"))
    assert fixtures_dir() == tmp_path / "mine"
