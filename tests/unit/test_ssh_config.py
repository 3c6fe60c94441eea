"""Layer 1: an sftp:// host resolved through OpenSSH client config as ssh does it -- Host
aliases, HostName, Port, User, ProxyJump, HostKeyAlias; the URL wins over the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicfs.origins.ssh_config import Hop, SSHConfigError, config_paths, resolve

CONFIG = """
Host nas
    HostName 10.1.2.3
    Port 2222
    User music
    IdentityFile ~/.ssh/nas_key
    IdentitiesOnly yes
    ProxyJump admin@jumpbox:2200,bastion

Host keyed
    HostName 10.9.9.9
    HostKeyAlias nas-key

Host *.lan
    User lanuser
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(CONFIG)
    return path


def test_an_alias_resolves_to_its_hostname_port_user_and_jumps(config: Path) -> None:
    e = resolve("nas", None, None, config)
    assert (e.alias, e.host, e.port, e.user, e.key_name) == (
        "nas",
        "10.1.2.3",
        2222,
        "music",
        "10.1.2.3",
    )
    assert e.jumps == (Hop("jumpbox", "admin", 2200), Hop("bastion"))
    assert e.config == (config,)
    assert e.where() == "music@nas (10.1.2.3:2222) via admin@jumpbox:2200, bastion"


def test_the_url_wins_over_the_config(config: Path) -> None:
    e = resolve("nas", "other", 22, config)
    assert (e.host, e.port, e.user) == ("10.1.2.3", 22, "other")


def test_patterns_aliases_for_host_keys_and_unknown_hosts(config: Path) -> None:
    assert resolve("box.lan", None, None, config).user == "lanuser"
    keyed = resolve("keyed", None, None, config)
    assert (keyed.host, keyed.key_name, keyed.port) == ("10.9.9.9", "nas-key", 22)
    plain = resolve("elsewhere.example", None, 2022, config)
    assert (plain.host, plain.port, plain.user, plain.jumps) == (
        "elsewhere.example",
        2022,
        None,
        (),
    )
    assert plain.where() == "elsewhere.example:2022"


def test_config_files_default_and_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_paths(None) == ()  # no ~/.ssh/config: nothing to read, not an error
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(CONFIG)
    assert config_paths(None) == (tmp_path / ".ssh" / "config",)
    assert resolve("nas", None, None, None).host == "10.1.2.3"
    with pytest.raises(SSHConfigError, match="does not exist"):
        config_paths(tmp_path / "missing")


def test_a_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("Host nas\n    Port notanumber\n")
    with pytest.raises(SSHConfigError, match="cannot use SSH config"):
        resolve("nas", None, None, bad)


def test_proxyjump_hops_parse() -> None:
    assert Hop.parse("u@h:1") == Hop("h", "u", 1)
    assert Hop.parse("[fe80::1]:2200") == Hop("fe80::1", None, 2200)
    assert Hop.parse("alias") == Hop("alias")
    with pytest.raises(ValueError):
        Hop.parse("h:port")
