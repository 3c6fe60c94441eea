"""An S3 / MinIO bucket as an origin, through the minio client.

* ``s3://bucket[/prefix]`` plus the origin's ``endpoint`` (default AWS), ``region`` and
  ``secure`` (TLS, on unless turned off or the endpoint is ``http://``).
* Credentials come from ``credentials_file`` (AWS INI format, section ``profile``) or the
  environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``),
  never from the URL, and never appear in logs or status.
* Reads are ranged GETs, and a sequential run of them is served from one streaming GET
  kept open (``s3_streams.py``; ``streams``, ``stream_after``, ``stream_idle``); listing
  is paginated by the client; an object's ETag is its version, and the GETs of one read
  carry ``If-Match`` so two versions never mix. The minio client blocks, so every call
  runs in a worker thread under a limiter, with socket timeouts of ``timeouts.operation``
  and no client-side retries (the pool retries within the request's deadline); a trio
  caller whose deadline passes abandons the thread rather than waiting for it.
"""

from __future__ import annotations

import configparser
import errno
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from musicfs.failpoints import fail_point
from musicfs.origins.base import Listing, OriginEntry, OriginError
from musicfs.origins.s3_stream import Opened
from musicfs.origins.s3_streams import Claim, StreamSettings, StreamTable
from musicfs.origins.settings import OriginSettings, OriginTimeouts
from musicfs.origins.urls import OriginConfigError, S3Address

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_THREADS = 8
DEFAULT_ENDPOINT = "s3.amazonaws.com"
# Health checks GET this (normally absent) key: any answer but an error means "serving".
HEALTH_PROBE = ".musicfs-health-probe"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _endpoint(settings: OriginSettings) -> tuple[str, bool]:
    """(host[:port], secure) from ``endpoint`` and ``secure``."""
    raw = settings.endpoint or DEFAULT_ENDPOINT
    secure = settings.secure
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OriginConfigError(f"endpoint {raw!r}: expected host[:port] or http(s)://host")
        if parts.username or parts.password:
            raise OriginConfigError("endpoint must not contain credentials")
        if parts.path.strip("/"):
            raise OriginConfigError(f"endpoint {raw!r}: must not have a path")
        scheme_secure = parts.scheme == "https"
        if secure is not None and secure != scheme_secure:
            raise OriginConfigError(
                f"endpoint {raw!r} says {parts.scheme} but secure = {str(secure).lower()}"
            )
        return parts.netloc, scheme_secure
    return raw, True if secure is None else secure


def load_credentials(settings: OriginSettings) -> tuple[str, str, str | None] | None:
    """(access key, secret key, session token) from the credentials file or environment;
    ``None`` for anonymous access."""
    if settings.credentials_file is not None:
        path = settings.credentials_file.expanduser()
        parser = configparser.ConfigParser()
        try:
            with path.open(encoding="utf-8") as f:
                parser.read_file(f)
        except FileNotFoundError:
            raise OriginConfigError(f"credentials file {path} does not exist") from None
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise OriginConfigError(f"cannot read credentials file {path}: {exc}") from None
        section = settings.profile
        if not parser.has_section(section):
            raise OriginConfigError(f"credentials file {path} has no [{section}] section")
        key = parser.get(section, "aws_access_key_id", fallback=None)
        secret = parser.get(section, "aws_secret_access_key", fallback=None)
        if not key or not secret:
            raise OriginConfigError(
                f"credentials file {path} [{section}] needs aws_access_key_id and "
                "aws_secret_access_key"
            )
        return key, secret, parser.get(section, "aws_session_token", fallback=None)
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret, os.environ.get("AWS_SESSION_TOKEN") or None
    if key or secret:
        raise OriginConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    return None


class S3Origin:
    def __init__(
        self, name: str, address: S3Address, settings: OriginSettings, timeouts: OriginTimeouts
    ):
        self._name = name
        self.address = address
        self.timeout = timeouts.operation
        self.endpoint, self.secure = _endpoint(settings)
        credentials = load_credentials(settings)
        if credentials is None:
            log.info("s3: origin=%s: no credentials configured, using anonymous access", name)
        self._limiter = trio.CapacityLimiter(MAX_THREADS)
        self.ca_file = settings.ca_file.expanduser() if settings.ca_file else None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise OriginConfigError(f"ca_file {self.ca_file} does not exist")
        if self.ca_file is not None and not self.secure:
            raise OriginConfigError("ca_file is set but TLS is off (secure = false / http://)")
        http = urllib3.PoolManager(
            # A NAS's MinIO usually has a certificate from its owner's own CA.
            ca_certs=str(self.ca_file) if self.ca_file else None,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            maxsize=MAX_THREADS,
            # One retry only for a pooled connection the server already closed; anything
            # else is retried by the pool, inside the request's deadline.
            retries=urllib3.Retry(total=1, connect=0, read=0, status=0, redirect=0),
        )
        access, secret, token = credentials or (None, None, None)
        self._client = Minio(
            self.endpoint,
            access_key=access,
            secret_key=secret,
            session_token=token,
            secure=self.secure,
            region=settings.region or "us-east-1",
            http_client=http,
        )
        self._streams = StreamTable(
            name,
            self._open_get,
            StreamSettings(
                streams=settings.streams,
                stream_after=settings.stream_after,
                stream_idle=settings.stream_idle,
                timeout=self.timeout,
            ),
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def display_url(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.address.bucket}/{self.address.prefix} ({scheme}://{self.endpoint})"

    @property
    def identity(self) -> str:
        """Bucket, prefix and server; not TLS on or off (the same objects either way)."""
        return f"s3://{self.address.bucket}/{self.address.prefix} at {self.endpoint}"

    def _key(self, path: str) -> str:
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise OriginError(errno.EINVAL, "invalid path", origin=self._name, path=path)
        return self.address.prefix + path

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self._limiter, abandon_on_cancel=True
        )

    # -- errors ------------------------------------------------------------------------

    def _error(self, exc: BaseException, path: str | None) -> OriginError:
        def err(code: int, message: str, wide: bool = False) -> OriginError:
            return OriginError(code, message, origin=self._name, path=path, origin_wide=wide)

        bucket = self.address.bucket
        if isinstance(exc, OriginError):
            return exc
        if isinstance(exc, S3Error):
            code = exc.code or ""
            if code == "NoSuchBucket":
                return err(errno.ENOENT, f"bucket {bucket!r} does not exist", True)
            if code in ("NoSuchKey", "NoSuchObject"):
                return err(errno.ENOENT, "no such object in the bucket")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return err(errno.EACCES, f"credentials refused by the server ({code})", True)
            if code == "AccessDenied":
                return err(errno.EACCES, "access denied by the server")
            if code == "PreconditionFailed":  # If-Match: another version than the read's
                return self._streams.changed("the server refused If-Match", path)
            return err(errno.EIO, f"S3 error {code}: {exc.message}")
        if isinstance(exc, ServerError):
            return err(errno.EIO, f"server error (HTTP {exc.status_code})")
        if isinstance(exc, InvalidResponseError):
            return err(errno.EIO, "invalid response from the server")
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            return self._error(exc.reason, path)
        if isinstance(exc, urllib3.exceptions.NameResolutionError | socket.gaierror):
            host = self.endpoint.rsplit(":", 1)[0]
            return err(errno.EHOSTUNREACH, f"cannot resolve host {host!r}")
        # NewConnectionError is a ConnectTimeoutError subclass: test it first.
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, ConnectionRefusedError):
                return err(errno.ECONNREFUSED, f"connection to {self.endpoint} refused")
            if isinstance(cause, OSError) and cause.errno:
                return err(cause.errno, f"cannot connect to {self.endpoint}: {cause.strerror}")
            return err(errno.ECONNREFUSED, f"cannot connect to {self.endpoint}")
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return err(
                errno.ETIMEDOUT, f"no connection to {self.endpoint} within {self.timeout:g}s"
            )
        if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
            return err(errno.ETIMEDOUT, f"server stalled for {self.timeout:g}s")
        if isinstance(exc, urllib3.exceptions.SSLError):
            trusted = f"the CAs in {self.ca_file}" if self.ca_file else "the system's CAs"
            return err(
                errno.EPROTO,
                f"TLS with {self.endpoint} failed, nothing was sent: {_tls_reason(exc)} "
                f"(trusting {trusted}; a private CA goes in the origin's ca_file)",
                True,
            )
        if isinstance(exc, urllib3.exceptions.ProtocolError):
            return err(errno.ECONNRESET, f"connection to {self.endpoint} broken: {exc}")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return err(errno.EIO, f"HTTP error talking to {self.endpoint}: {exc}")
        if isinstance(exc, OSError) and exc.errno:
            return err(exc.errno, f"{exc.strerror or exc}")
        return err(errno.EIO, f"unexpected: {exc!r}")

    def _guard(self, fn: Callable[..., T], path: str | None, *args: Any) -> T:
        try:
            return fn(*args)
        except OriginError as exc:
            if exc.path is None:
                exc.path = path
            raise
        except (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError) as exc:
            raise self._error(exc, path) from None
        except OSError as exc:
            raise self._error(exc, path) from None
        except ValueError as exc:  # minio validates names and responses with ValueError
            raise OriginError(errno.EIO, str(exc), origin=self._name, path=path) from None

    # -- the origin protocol -----------------------------------------------------------

    def _open_get(
        self, key: str, offset: int, length: int | None, if_match: str | None
    ) -> Opened | None:
        """A GET of ``length`` bytes at ``offset`` (None: to the end), of the version
        ``if_match`` if given; None if ``offset`` is at or past the end."""
        try:
            response = self._client.get_object(
                self.address.bucket,
                key,
                offset=offset,
                length=length or 0,
                request_headers={"If-Match": if_match} if if_match else None,
            )
        except S3Error as exc:
            if exc.code == "InvalidRange":
                return None  # at or past the end: what a short read at EOF looks like
            raise
        body = _ResponseBody(response)
        try:
            start, end, size = _answered(response.headers)
        except ValueError:
            body.close()
            raise OriginError(
                errno.EIO, "the server's answer has no usable Content-Range", origin=self._name
            ) from None
        return Opened(body, start, end, size, response.headers.get("ETag"))

    def _serve_sync(self, claim: Claim) -> bytes:
        fail_point("origin.s3.read")
        return self._streams.serve(claim)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        # Claimed here, in the order reads are asked for, so that consecutive ranges asked
        # for at once queue on one stream in order (s3_streams.py).
        claim = self._streams.claim(self._key(path), offset, length)
        try:
            return await self._run(self._guard, self._serve_sync, path, claim)
        finally:
            self._streams.settle(claim)

    def _entry(self, key: str, size: int | None, etag: str | None, modified: Any) -> OriginEntry:
        rel = key[len(self.address.prefix) :]
        mtime_ns = int(modified.timestamp() * 1_000_000_000) if modified is not None else 0
        return OriginEntry(rel, int(size or 0), mtime_ns, (etag or "").strip('"') or None)

    def _stat_sync(self, path: str) -> OriginEntry:
        obj = self._client.stat_object(self.address.bucket, self._key(path))
        self._streams.saw_version(self._key(path), obj.etag)
        return self._entry(
            obj.object_name or self._key(path), obj.size, obj.etag, obj.last_modified
        )

    async def stat(self, path: str) -> OriginEntry:
        return await self._run(self._guard, self._stat_sync, path, path)

    def _list_sync(self) -> Listing:
        entries = []
        for obj in self._client.list_objects(
            self.address.bucket, prefix=self.address.prefix or None, recursive=True
        ):
            name = obj.object_name or ""
            if obj.is_dir or not name or name.endswith("/"):
                continue
            rel = name[len(self.address.prefix) :]
            if any(p in ("", ".", "..") for p in rel.split("/")):
                log.warning("s3: origin=%s path=%r: unusable object name, skipped", self._name, rel)
                continue
            self._streams.saw_version(name, obj.etag)
            entries.append(self._entry(name, obj.size, obj.etag, obj.last_modified))
        return Listing(entries)

    async def list(self) -> Listing:
        return await self._run(self._guard, self._list_sync, "")

    def _check_sync(self) -> None:
        fail_point("origin.s3.check")
        self._streams.sweep()  # health checks come every few seconds: idle streams go
        # A GET (unlike HEAD) returns an error body, so the server can say *why* it refuses
        # (NoSuchBucket, InvalidAccessKeyId, SignatureDoesNotMatch...). A missing probe
        # object is the healthy answer.
        try:
            response = self._client.get_object(
                self.address.bucket, self.address.prefix + HEALTH_PROBE, length=1
            )
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "InvalidRange"):
                return
            error = self._error(exc, "")
            error.origin_wide = True
            raise error from None
        response.close()
        response.release_conn()

    async def check(self) -> None:
        await self._run(self._guard, self._check_sync, "")

    async def aclose(self) -> None:
        self._streams.close_all()
        self._client._http.clear()


class _ResponseBody:
    """A GET's body; closing it also drops its connection (it may hold unread bytes)."""

    def __init__(self, response: urllib3.BaseHTTPResponse):
        self._response = response

    def read(self, n: int) -> bytes:
        return self._response.read(n)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


def _answered(headers: Any) -> tuple[int, int, int]:
    """(start, end, object size) of a GET's answer, from Content-Range (a range) or
    Content-Length (the whole object). Raises ValueError if neither says."""
    content_range = headers.get("Content-Range")
    if content_range:
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if match is None:
            raise ValueError(content_range)
        first, last, size = (int(g) for g in match.groups())
        return first, last + 1, size
    size = int(headers.get("Content-Length", ""))
    return 0, size, size


def _tls_reason(exc: BaseException) -> str:
    """The certificate problem in words, without urllib3's wrapping."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({inner.verify_message})"
    return str(getattr(inner, "reason", None) or inner)
