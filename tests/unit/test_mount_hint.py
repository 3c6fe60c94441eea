"""The hint given when the FUSE mount fails: a user's allow_other without user_allow_other
in /etc/fuse.conf is the usual cause, and says so."""

from __future__ import annotations

from musicfs.service.fuse_session import mount_failure_hint

DEBIAN_DEFAULT = "# Allow non-root users to specify the allow_other option.\n#user_allow_other\n"


def test_allow_other_as_a_user_without_user_allow_other_points_at_fuse_conf() -> None:
    hint = mount_failure_hint(True, 1000, DEBIAN_DEFAULT)
    assert "user_allow_other" in hint and "/etc/fuse.conf" in hint
    assert "fuse.allow_other = false" in hint and "fuse3 installed" not in hint
    assert "user_allow_other" in mount_failure_hint(True, 1000, "")  # no fuse.conf at all


def test_other_failures_keep_the_general_hint() -> None:
    general = "is fuse3 installed and /dev/fuse usable?"
    assert mount_failure_hint(True, 1000, DEBIAN_DEFAULT + "user_allow_other  # on\n") == general
    assert mount_failure_hint(True, 0, DEBIAN_DEFAULT) == general  # root needs no permission
    assert mount_failure_hint(False, 1000, DEBIAN_DEFAULT) == general
