# A library on a NAS over SFTP (OpenSSH on a second machine), the key and known_hosts made
# at run time under `secrets` (the client's daemon reads them from there or, on NixOS, as
# LoadCredential= copies). Then the NAS goes away three times -- cable pulled (packets
# silently dropped), sshd stopped with its sessions killed, the machine crashed (a power
# cut) -- and comes back: `ls -R` stays instant, the cached album plays, uncached reads fail
# with EIO within the read deadline instead of hanging, and reads resume by themselves,
# without a restart or a remount. `nas` serves `library` (three long tracks) as user music
# at /srv/music; `client` has musicfs.service installed but not started.


def sftp_outage(client, nas, subtest, library: str, secrets: str, deadline: int) -> None:
    nas.start()
    client.start()
    nas.wait_for_unit("sshd.service")
    nas.succeed(
        "mkdir -p /srv/music",
        f"cp -r --no-preserve=mode,ownership {library}/. /srv/music/",
        "chown -R music:users /srv/music",
    )
    expected = sums(nas, "/srv/music")

    with subtest("the key made at run time; the daemon mounts the NAS"):
        client.wait_for_unit("multi-user.target")
        client.succeed(
            f"install -d -m 700 {secrets}",
            f"ssh-keygen -q -t ed25519 -N '' -f {secrets}/id_ed25519",
        )
        public_key = client.succeed(f"cat {secrets}/id_ed25519.pub").strip()
        nas.succeed(
            "install -d -m 700 -o music -g users /home/music/.ssh",
            f"echo {shlex.quote(public_key)} > /home/music/.ssh/authorized_keys",
            "chown music:users /home/music/.ssh/authorized_keys",
            "chmod 600 /home/music/.ssh/authorized_keys",
        )
        host_key = nas.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub").strip()
        client.succeed(f"echo {shlex.quote('nas ' + host_key)} > {secrets}/known_hosts")
        # The same files work for plain ssh with strict host key checking.
        client.succeed(
            f"ssh -i {secrets}/id_ed25519 -o UserKnownHostsFile={secrets}/known_hosts"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes music@nas true"
        )
        client.succeed("systemctl start musicfs.service")
        client.wait_for_unit("musicfs.service")
        wait_for_tracks(client, len(expected))
        # Not the long tracks yet: read whole, they would be cached before their outage.
        short = sums(nas, "/srv/music", under_kib=1024)
        assert sums(client, MNT, under_kib=1024) == short, "bytes differ from the NAS"

    album = play_an_album(client)
    long1, long2, long3 = long_tracks(client, 3)
    pid = main_pid(client)

    with subtest("cable pulled (packets dropped): cached plays, uncached fails fast"):
        nas.block()
        check_outage(client, album, long1, deadline)

    with subtest("cable back: uncached reads resume without a remount"):
        nas.unblock()
        check_recovered(client, long1, expected, pid, last=False)

    with subtest("sshd stopped, its sessions killed: cached plays, uncached fails fast"):
        nas.succeed("systemctl stop sshd.service", "pkill -KILL -u music || true")
        check_outage(client, album, long2, deadline)

    with subtest("sshd back: uncached reads resume without a remount"):
        nas.succeed("systemctl start sshd.service")
        check_recovered(client, long2, expected, pid, last=False)

    with subtest("the NAS crashed (power cut): cached plays, uncached fails fast"):
        nas.crash()
        check_outage(client, album, long3, deadline)

    with subtest("the NAS booted again: uncached reads resume without a remount"):
        nas.start()
        nas.wait_for_unit("sshd.service")
        check_recovered(client, long3, expected, pid)
