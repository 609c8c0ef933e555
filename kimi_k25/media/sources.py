"""Media URLs: read `data:` URLs, and `file://` and `http(s)://` URLs only where the operator allows them.

- `data:` URLs are always accepted (base64 or percent-encoded payloads).
- `file://` URLs are read only below the directory set with `--allowed-local-media-path`, after
  resolving symlinks and `..`; without that option they are rejected.
- `http://` and `https://` URLs are fetched only from hosts on the `--allowed-media-domains`
  list, which takes exact host names and no wildcards. A timeout and a byte cap apply while the
  body streams, and redirects are followed only to hosts on the same list. Downloads use the standard
  library's `http.client` and never go through a proxy.
- Every other scheme, and any URL with a user name or password in it, is rejected before any
  file is opened or connection made.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kimi_k25.media.errors import (
    DOMAIN_NOT_ALLOWED,
    DOWNLOAD_FAILED,
    DOWNLOAD_TIMEOUT,
    INVALID_URL,
    LOCAL_MEDIA_DISABLED,
    MEDIA_NOT_FOUND,
    MEDIA_TOO_LARGE,
    PATH_NOT_ALLOWED,
    REMOTE_MEDIA_DISABLED,
    UNSUPPORTED_URL_SCHEME,
    MediaError,
    describe_part,
)

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_READ_SIZE = 64 * 1024
_USER_AGENT = "kimi-k25-media"
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class MediaSourcePolicy:
    """Rules for the media URLs a server accepts; the default accepts only `data:` URLs."""

    # Directory below which file:// URLs may be read; None rejects every file:// URL.
    allowed_local_media_path: Path | None = None
    # Host names that http(s):// URLs may name, matched exactly and case-insensitively; empty rejects all.
    allowed_media_domains: frozenset[str] = field(default_factory=frozenset)
    # Seconds for a whole download, redirects included.
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3
    # Byte cap used when load_media_bytes is called without one.
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.allowed_local_media_path is not None:
            object.__setattr__(self, "allowed_local_media_path", Path(self.allowed_local_media_path))
        domains = self.allowed_media_domains
        if isinstance(domains, str):
            domains = [domains]
        object.__setattr__(self, "allowed_media_domains", frozenset(_normalize_domain(d) for d in domains))
        if self.fetch_timeout_s <= 0:
            raise ValueError(f"fetch_timeout_s must be positive seconds, got {self.fetch_timeout_s!r}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be 0 or more, got {self.max_redirects!r}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes!r}")

    @classmethod
    def from_options(cls, allowed_local_media_path: str | Path | None = None,
                     allowed_media_domains: str | Iterable[str] | None = None, **kwargs: float | int) -> MediaSourcePolicy:
        """Build a policy from command-line values; domains may be one comma-separated string."""
        if isinstance(allowed_media_domains, str):
            allowed_media_domains = [d for d in allowed_media_domains.split(",") if d.strip()]
        return cls(allowed_local_media_path=Path(allowed_local_media_path) if allowed_local_media_path else None,
                   allowed_media_domains=frozenset(allowed_media_domains or ()), **kwargs)


@dataclass(frozen=True)
class LoadedMedia:
    """Bytes of one media file and the MIME type its URL or server gave, if any."""

    data: bytes
    mime_type: str | None
    # "data", "file" or "http"
    source: str


def load_media_bytes(url: str, policy: MediaSourcePolicy, max_bytes: int | None = None,
                     param: str | None = None) -> LoadedMedia:
    """Return the bytes that `url` points to, if `policy` allows the URL; at most `max_bytes` bytes.

    Raises MediaError naming `param` for a rejected URL, a missing file, a failed or slow download,
    or more bytes than the cap. Rejections happen before any file is opened or connection made.
    """
    where = describe_part(param)
    cap = policy.max_bytes if max_bytes is None else max_bytes
    if not isinstance(url, str) or not url:
        raise MediaError(f"The media URL in {where} is missing or not a string; send a data:, file:// or http(s):// "
                         "URL.", param, INVALID_URL)

    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _load_data_url(url, cap, where, param)
    if scheme not in ("file", "http", "https"):
        scheme_text = f"scheme {scheme}:" if scheme else "no scheme"
        raise MediaError(
            f"The media URL in {where} has {scheme_text}, which this server does not accept; send the file as a "
            "data: URL (data:image/png;base64,...).", param, UNSUPPORTED_URL_SCHEME)

    split = _split_url(url, where, param)
    if scheme == "file":
        return _load_file_url(split, policy, cap, where, param)
    return _download(url, policy, cap, where, param)


def _load_data_url(url: str, cap: int, where: str, param: str | None) -> LoadedMedia:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise MediaError(f"The data: URL in {where} has no comma before its payload; expected "
                         "data:<mime type>;base64,<data>.", param, INVALID_URL)
    attributes = [part.strip().lower() for part in header.split(";")]
    mime_type = attributes[0] or None
    if "base64" not in attributes[1:]:
        data = urllib.parse.unquote_to_bytes(payload)
    else:
        payload = "".join(payload.split())
        # Four base64 characters carry three bytes; reject before decoding anything too large.
        if len(payload) // 4 * 3 > cap + 2:
            raise _too_large(where, param, cap, f"about {len(payload) // 4 * 3}")
        payload += "=" * (-len(payload) % 4)
        try:
            # The URL-safe alphabet ("-" and "_" for "+" and "/") is accepted too.
            data = base64.b64decode(payload.translate(_URLSAFE_TO_STANDARD), validate=True)
        except (binascii.Error, ValueError) as error:
            raise MediaError(f"The data: URL in {where} is not valid base64 ({error}); encode the file with "
                             "standard base64.", param, INVALID_URL) from error
    if len(data) > cap:
        raise _too_large(where, param, cap, str(len(data)))
    return LoadedMedia(data=data, mime_type=mime_type, source="data")


def _load_file_url(split: urllib.parse.SplitResult, policy: MediaSourcePolicy, cap: int, where: str,
                   param: str | None) -> LoadedMedia:
    root = policy.allowed_local_media_path
    if root is None:
        raise MediaError(
            f"The file:// URL in {where} is rejected because this server reads no local files; send the file as a "
            "data: URL, or start the server with --allowed-local-media-path DIR.", param, LOCAL_MEDIA_DISABLED)
    if split.netloc not in ("", "localhost"):
        raise MediaError(f"The file:// URL in {where} names host {split.netloc!r}; only local paths "
                         "(file:///path) are accepted.", param, INVALID_URL)
    requested = Path(urllib.parse.unquote(split.path))
    if not requested.is_absolute():
        raise MediaError(f"The file:// URL in {where} has no absolute path; write file:///absolute/path.", param,
                         INVALID_URL)

    # resolve() follows symlinks and removes "..", so the check below tests the file that would be opened.
    try:
        resolved_root = root.resolve()
        target = requested.resolve()
    except (OSError, RuntimeError, ValueError) as error:
        raise MediaError(f"The file {str(requested)!r} in {where} could not be resolved ({error}).", param,
                         MEDIA_NOT_FOUND) from error
    if not target.is_relative_to(resolved_root):
        raise MediaError(f"The file {str(requested)!r} in {where} is outside the directory this server allows "
                         "media to be read from.", param, PATH_NOT_ALLOWED)

    # O_NOFOLLOW refuses a final component swapped for a symlink since resolve(); O_NONBLOCK keeps a FIFO
    # from blocking the open, and the S_ISREG check then rejects it.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(target, flags)
    except FileNotFoundError as error:
        raise MediaError(f"The file {str(requested)!r} in {where} was not found.", param, MEDIA_NOT_FOUND) from error
    except OSError as error:
        raise MediaError(f"The file {str(requested)!r} in {where} could not be opened ({error.strerror}).", param,
                         MEDIA_NOT_FOUND) from error
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise MediaError(f"The path {str(requested)!r} in {where} is not a regular file.", param, MEDIA_NOT_FOUND)
        if status.st_size > cap:
            raise _too_large(where, param, cap, str(status.st_size))
        with os.fdopen(descriptor, "rb") as file:
            descriptor = -1  # the file object owns and closes it now
            data = file.read(cap + 1)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    if len(data) > cap:
        raise _too_large(where, param, cap, f"more than {cap}")
    return LoadedMedia(data=data, mime_type=None, source="file")


def _download(url: str, policy: MediaSourcePolicy, cap: int, where: str, param: str | None) -> LoadedMedia:
    deadline = time.monotonic() + policy.fetch_timeout_s
    current = url
    for _ in range(policy.max_redirects + 1):
        split = _split_url(current, where, param)
        _check_remote_allowed(split, policy, where, param)
        try:
            location, loaded = _fetch_once(split, deadline, cap, where, param)
        except (OSError, http.client.HTTPException) as error:
            # A timeout shows up as TimeoutError, or as a reset socket once the deadline timer shut it down.
            if isinstance(error, TimeoutError) or time.monotonic() >= deadline:
                raise MediaError(
                    f"Downloading the media in {where} from {split.hostname} timed out after "
                    f"{policy.fetch_timeout_s:g} s; send the file as a data: URL or use a faster host.", param,
                    DOWNLOAD_TIMEOUT) from error
            raise MediaError(f"Downloading the media in {where} from {split.hostname} failed ({error}).", param,
                             DOWNLOAD_FAILED) from error
        if loaded is not None:
            logger.info("downloaded %d bytes of media from %s", len(loaded.data), split.hostname)
            return loaded
        current = urllib.parse.urljoin(current, location)
    raise MediaError(f"Downloading the media in {where} took more than {policy.max_redirects} redirects.", param,
                     DOWNLOAD_FAILED)


def _fetch_once(split: urllib.parse.SplitResult, deadline: float, cap: int, where: str,
                param: str | None) -> tuple[str | None, LoadedMedia | None]:
    """GET one URL. Returns (redirect location, None) for a redirect, else (None, the body)."""
    timeout = _remaining(deadline)
    port = split.port
    if split.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            split.hostname, port, timeout=timeout, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(split.hostname, port, timeout=timeout)
    target = split.path or "/"
    if split.query:
        target += "?" + split.query

    connection.connect()
    # Kept here because http.client drops connection.sock once a "Connection: close" response
    # starts, while the response still reads from this socket.
    sock = connection.sock
    # Socket timeouts bound each read, not the whole download, so a server that sends a byte at a
    # time could stretch it. The timer shuts the socket down at the deadline whatever the server does.
    timer = threading.Timer(_remaining(deadline), _shut_down, args=(sock,))
    timer.daemon = True
    timer.start()
    try:
        connection.request("GET", target, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
        response = connection.getresponse()
        try:
            return _read_response(response, sock, split, deadline, cap, where, param)
        finally:
            response.close()
    finally:
        timer.cancel()
        connection.close()


def _read_response(response: http.client.HTTPResponse, sock: socket.socket, split: urllib.parse.SplitResult,
                   deadline: float, cap: int, where: str, param: str | None) -> tuple[str | None, LoadedMedia | None]:
    if response.status in _REDIRECT_STATUSES:
        location = response.getheader("Location")
        if not location:
            raise MediaError(f"The media host for {where} sent a redirect without a Location header.", param,
                             DOWNLOAD_FAILED)
        return location, None
    if response.status != 200:
        raise MediaError(f"Downloading the media in {where} failed: {split.hostname} returned HTTP "
                         f"{response.status} {response.reason}.", param, DOWNLOAD_FAILED)
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise MediaError(f"The media host for {where} sent a {encoding}-encoded body; serve the file "
                         "uncompressed.", param, DOWNLOAD_FAILED)
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > cap:
        raise _too_large(where, param, cap, length.strip())

    body = bytearray()
    while True:
        sock.settimeout(_remaining(deadline))
        block = response.read1(_READ_SIZE)
        if not block:
            break
        body += block
        if len(body) > cap:
            raise _too_large(where, param, cap, f"more than {cap}")
    if time.monotonic() >= deadline:
        # The deadline timer's shutdown reads as an ordinary end of stream, so the body may be cut short.
        raise TimeoutError("download deadline passed")
    content_type = response.getheader("Content-Type")
    mime_type = content_type.split(";")[0].strip().lower() if content_type else None
    return None, LoadedMedia(data=bytes(body), mime_type=mime_type, source="http")


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("download deadline passed")
    return remaining


def _check_remote_allowed(split: urllib.parse.SplitResult, policy: MediaSourcePolicy, where: str,
                          param: str | None) -> None:
    if split.scheme not in ("http", "https"):
        raise MediaError(f"The media URL in {where} redirected to a {split.scheme or 'schemeless'} URL; only "
                         "http and https are followed.", param, UNSUPPORTED_URL_SCHEME)
    if not policy.allowed_media_domains:
        raise MediaError(
            f"The http(s) URL in {where} is rejected because this server downloads no media; send the file as a data: "
            "URL, or start the server with --allowed-media-domains HOST[,HOST...].", param, REMOTE_MEDIA_DISABLED)
    host = (split.hostname or "").rstrip(".")
    if host not in policy.allowed_media_domains:
        raise MediaError(f"The media URL in {where} names host {host!r}, which is not on this server's list of "
                         "allowed media domains; send the file as a data: URL.", param, DOMAIN_NOT_ALLOWED)


def _split_url(url: str, where: str, param: str | None) -> urllib.parse.SplitResult:
    try:
        split = urllib.parse.urlsplit(url)
        split.port  # noqa: B018 - parses the port, which raises ValueError when it is invalid
    except ValueError as error:
        raise MediaError(f"The media URL in {where} is not a valid URL ({error}).", param, INVALID_URL) from error
    if split.username is not None or split.password is not None:
        raise MediaError(f"The media URL in {where} contains a user name or password, which this server does not "
                         "accept; remove the credentials from the URL.", param, INVALID_URL)
    if split.scheme in ("http", "https") and not split.hostname:
        raise MediaError(f"The media URL in {where} has no host name.", param, INVALID_URL)
    return split


def _normalize_domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    if not name or (any(c in name for c in "/:*@ ") and not _is_ipv6(name)):
        raise ValueError(f"invalid media domain {domain!r}: give a bare host name such as images.example.com")
    return name


def _is_ipv6(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, name)
    except OSError:
        return False
    return True


def _too_large(where: str, param: str | None, cap: int, size: str) -> MediaError:
    return MediaError(f"The media in {where} is {size} bytes, more than this server's limit of {cap} bytes; send a "
                      "smaller file.", param, MEDIA_TOO_LARGE)
