from pathlib import Path

import pytest

from musicfs.cli import main
from musicfs.config import ConfigError, load_config, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_full_config_parses(tmp_path: Path) -> None:
    s = load_config(
        write(
            tmp_path,
            """
mountpoint = "/mnt/music"
state_dir = "/var/lib/musicfs"
[library]
template = "$artist/$title"
scan_interval = "30m"
[fuse]
read_deadline = "2500ms"
allow_other = true
[cache]
max_size = "2G"
retry_interval = "10s"
[[origin]]
url = "/srv/music"
name = "nas"
[[origin]]
url = "file:///mirror"
""",
        )
    )
    assert s.mountpoint == Path("/mnt/music")
    assert s.library.scan_interval == 1800
    assert s.fuse.read_deadline == 2.5 and s.fuse.allow_other
    assert s.cache.max_size == 2 * 1024**3
    assert s.cache.retry_interval == 10
    assert [o.name for o in s.origins] == ["nas", "local1"]


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("mountpoint = '/m'\nbogus = 1\n", 2, "bogus"),
        ("[fuse]\nallow_other = true\nread_deadlin = 3\n", 3, "fuse.read_deadlin"),
        ("[[origin]]\nurl = '/a'\n[[origin]]\nurl = '/b'\nkey_fil = 'x'\n", 5, "origin.key_fil"),
        ("[cache]\nmax_size = 'lots'\n", 2, "cache.max_size"),
        ("[cache]\nmemory = '1M'\nretry_interval = 'soon'\n", 3, "cache.retry_interval"),
        ("[fuse]\nallow_other = 'yes'\n", 2, "fuse.allow_other"),
        ("[library]\ntemplate = '$nope'\n", 2, "library.template"),
        # Rules checked once the whole file is read still name the line.
        ("[[origin]]\nname = 'nas'\nurl = 'sftp://u:pw@nas/m'\n", 3, "origin.url"),
        ("[[origin]]\nurl = '/a'\n[[origin]]\nurl = 'ftp://nas/m'\n", 4, "origin.url"),
        ("log_level = 'info'\n[fuse]\nread_deadline = 0\n", 3, "fuse.read_deadline"),
        ("[[origin]]\nurl='/a'\nname='x'\n[[origin]]\nurl='/b'\nname='x'\n", 6, "origin.name"),
        ("[cache]\nchunk_size = '1M'\nmax_size = 10\n", 3, "cache.max_size"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == line
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}:{line}: {key}: ")


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a = 1\n[fuse\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and "not valid TOML" in str(info.value)


def test_cli_exits_2_with_one_clear_line(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "[fuse]\nbad_key = 1\n")
    assert main(["scan", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"musicfs: {path}:2: fuse.bad_key: unknown key (known in [fuse]: "
        "allow_other, attr_timeout, drain_timeout, max_background, max_tasks, read_ahead_kb, "
        "read_deadline)"
    ]


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    assert main(["scan", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_duplicate_origin_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two origins are named 'x'"):
        load_config(
            write(tmp_path, "[[origin]]\nurl='/a'\nname='x'\n[[origin]]\nurl='/b'\nname='x'\n")
        )


def test_a_tiny_cache_says_what_it_would_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"less than one chunk .* e\.g\. 10G"):
        load_config(write(tmp_path, "[cache]\nmax_size = 10\n"))


def test_an_operation_timeout_past_the_read_deadline_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_config(write(tmp_path, "[fuse]\nread_deadline = '5s'\n[timeouts]\noperation = '10s'\n"))
    assert "timeouts.operation (10s) is longer than fuse.read_deadline (5s)" in caplog.text
    assert "never fails over" in caplog.text
    caplog.clear()
    load_config(write(tmp_path, "[fuse]\nread_deadline = '8s'\n[timeouts]\noperation = '5s'\n"))
    assert "timeouts.operation" not in caplog.text


def test_an_origin_flag_error_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--origin", "ftp://nas/music"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("musicfs: --origin ftp://nas/music: "), err


def test_units() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3)
    assert parse_size(10) == 10
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2h") == 7200
    for bad in ("-1", "ten", True):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("problem", ["missing", "file", "nonempty"])
def test_bad_mountpoints_exit_2(tmp_path: Path, capsys, problem: str) -> None:
    mp = tmp_path / "mp"
    if problem == "file":
        mp.write_text("x")
    elif problem == "nonempty":
        mp.mkdir()
        (mp / "f").write_text("x")
    code = main(["mount", "--origin", str(tmp_path), "--state-dir", str(tmp_path / "s"), str(mp)])
    assert code == 2
    err = capsys.readouterr().err
    assert {"missing": "does not exist", "file": "not a directory", "nonempty": "not empty"}[
        problem
    ] in err


def test_origin_timeouts_and_priorities(tmp_path: Path) -> None:
    from musicfs.library.coordinator import open_pool

    s = load_config(
        write(
            tmp_path,
            """
[timeouts]
operation = "2s"
health_interval = "3s"
health_max_backoff = "30s"
hedge_after = "1500ms"
[[origin]]
url = "/slow"
name = "slow"
priority = 5
[[origin]]
url = "/fast"
name = "fast"
priority = 1
[[origin]]
url = "/also-fast"
name = "also"
priority = 1
""",
        )
    )
    pool = open_pool(s)
    assert [o.name for o in pool] == ["fast", "also", "slow"]
    assert pool.operation_timeout == 2 and pool.read_deadline == 8
    assert pool.health.policy.interval == 3 and pool.health.policy.max_backoff == 30
    assert pool.health.policy.check_timeout == 2
    assert pool.retry.hedge_after == 1.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[timeouts]\noperation = 0\n", "timeouts.operation: must be greater than zero"),
        ("[cache]\nretry_interval = '0s'\n", "cache.retry_interval: must be greater than zero"),
        ("[timeouts]\nhedge_after = '0s'\n", "timeouts.hedge_after: must be greater than zero"),
        (
            "[timeouts]\nhealth_interval = '20s'\nhealth_max_backoff = '10s'\n",
            "timeouts.health_max_backoff: must not be shorter",
        ),
        ("[[origin]]\nurl = 'ftp://host/x'\n", "origin.url: ftp://host/x: unsupported"),
        ("[[origin]]\nurl = '/a'\npriority = 'high'\n", "origin.priority: expected a whole"),
        ("[[origin]]\nurl = '/a'\nconnections = 0\n", "origin.connections: expected a whole"),
    ],
)
def test_origin_setting_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, text))
