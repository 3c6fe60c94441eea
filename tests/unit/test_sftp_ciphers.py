"""Layer 1: the ciphers an SFTP origin offers -- asyncssh's own set, none added or
dropped, with AES-GCM first (one cipher call per packet in asyncssh, where
chacha20-poly1305 costs several; it decides cold throughput)."""

from __future__ import annotations

from asyncssh.encryption import get_default_encryption_algs

from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.sftp import SFTPOrigin
from musicfs.origins.sftp_asyncssh import PREFERRED_CIPHERS, AsyncsshTransport
from musicfs.origins.urls import parse_sftp


def test_the_offered_ciphers_are_asyncssh_defaults_with_aes_gcm_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = "sftp://music@nas.lan:2222/srv/music"
    config = tmp_path / "ssh_config"
    config.write_text("")
    settings = OriginSettings(url=url, name="nas", config_file=config, transport="asyncssh")
    origin = SFTPOrigin("nas", parse_sftp(url), settings, OriginTimeouts())
    assert isinstance(origin.transport, AsyncsshTransport)
    offered = origin.transport.options(origin._resolve())["encryption_algs"]
    assert offered == list(PREFERRED_CIPHERS)
    defaults = {alg.decode() for alg in get_default_encryption_algs()}
    assert set(offered) == defaults
    assert offered[0].startswith("aes") and offered[0].endswith("-gcm@openssh.com")
