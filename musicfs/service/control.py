"""The control socket: ``musicfs status`` and ``musicfs unmount`` talk to a running daemon.

One Unix stream socket per mount in the runtime directory (the directory is 0700 and the
socket 0600: only the daemon's owner may ask it anything). The protocol is one JSON object
per line each way: ``{"cmd": "status"}`` -> ``{"ok": true, ...}``. Every connection has a
deadline; a silent or slow client cannot hold the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicfs.resources import describe

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
CLIENT_DEADLINE = 5.0
# sockaddr_un holds 108 bytes; longer paths are reached through the directory's fd.
_MAX_SUN_PATH = 100


class ControlError(Exception):
    """No daemon answered, or it answered with an error."""


def socket_path(run_dir: Path, mountpoint: Path) -> Path:
    """Where the daemon serving ``mountpoint`` listens (one socket per mount point)."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:16]
    return run_dir / f"control-{digest}.sock"


@contextlib.contextmanager
def _short_address(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for sockaddr_un."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def prepare_run_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = run_dir.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(run_dir, 0o700)


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]):
        self.path = path
        self.handlers = handlers
        self._sock: trio.socket.SocketType | None = None

    async def bind(self) -> None:
        prepare_run_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            # Left by a daemon that died: we hold the state lock, so nobody else owns it.
            os.unlink(self.path)
        import trio  # here, not above: the clients (``request``) start in a few ms

        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with _short_address(self.path) as address:
                await sock.bind(address)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock

    async def serve(self) -> None:
        import trio

        assert self._sock is not None
        listener = trio.SocketListener(self._sock)
        try:
            await trio.serve_listeners(self._handle, [listener])
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _handle(self, stream: trio.SocketStream) -> None:
        import trio

        async with stream:
            with trio.move_on_after(CLIENT_DEADLINE):
                try:
                    request = await _read_line(stream)
                    reply = await self._dispatch(request)
                except (ValueError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(json.dumps(reply, default=str).encode() + b"\n")

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:
            log.exception("control: %s failed", cmd)
            return {"ok": False, "error": describe(exc)}


async def _read_line(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    value = json.loads(data.split(b"\n", 1)[0] or b"{}")
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def request(path: Path, cmd: str, timeout: float = CLIENT_DEADLINE, **args: Any) -> dict[str, Any]:
    """Ask the daemon listening at ``path``; raises ``ControlError`` if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _short_address(path) as address:
                sock.connect(address)
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except FileNotFoundError:
            raise ControlError(f"no running MusicFS listens at {path}") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"no running MusicFS listens at {path} (a stale socket is left there)"
            ) from None
        except TimeoutError:
            raise ControlError(f"the MusicFS at {path} did not answer within {timeout}s") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise ControlError(f"no running MusicFS listens at {path}") from None
            raise ControlError(f"{path}: {exc.strerror}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the MusicFS at {path} sent a malformed answer") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the MusicFS at {path} sent a malformed answer")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "request failed"))
    return reply
