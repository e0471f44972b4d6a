"""Fetching one output file safely: http(s) and ``data:`` only, public addresses only,
a size limit, a deadline, no credentials."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence

import attrs
import httpx

from jobhook.exceptions import OutputError

__all__ = ["FetchPolicy", "Fetched", "fetch"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolve(host, port) -> addresses``: how host names become addresses.
Resolver = Callable[[str, int], Sequence[str]]

_REDIRECTS = {301, 302, 303, 307, 308}
# Answers that will not change on a retry: the file is gone or never was.
_GONE = {400, 401, 403, 404, 405, 410, 414, 451}


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _networks(value: Iterable[str | Network]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in value)


@attrs.frozen
class FetchPolicy:
    """What a keeper may fetch, and how much.

    Only ``http``, ``https`` and ``data:`` URLs are fetched, never ones with a user
    name or password in them. Every address a host name resolves to must be public
    (not private, loopback, link-local, reserved or multicast) unless it lies in one of
    ``allow_networks`` (``"127.0.0.0/8"`` for tests on loopback); the request then goes
    to the address that was checked, so a second lookup cannot change it. Redirects
    are followed by hand, at most ``max_redirects``, each hop checked the same way.
    ``max_bytes`` caps one file, ``timeout`` one network operation and ``deadline``
    one whole fetch (seconds). No credentials are ever sent: no cookies, no
    ``Authorization``, no proxy or ``.netrc`` settings from the environment.
    """

    max_bytes: int = 100 * 1024 * 1024
    timeout: float = 10.0
    deadline: float = 120.0
    max_redirects: int = 5
    allow_networks: tuple[Network, ...] = attrs.field(default=(), converter=_networks)
    resolve: Resolver = system_resolve
    user_agent: str = "jobhook-outputs"

    def allows(self, address: str) -> bool:
        """True when a request may go to ``address`` (an IP address)."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allow_networks):
            return True
        return ip.is_global and not ip.is_multicast


@attrs.frozen
class Fetched:
    """A fetched file: its bytes, content type and SHA-256 (hex)."""

    data: bytes
    content_type: str
    sha256: str


def _refused(message: str) -> OutputError:
    return OutputError(message, permanent=True)


def _fetched(data: bytes, content_type: str) -> Fetched:
    return Fetched(data, content_type, hashlib.sha256(data).hexdigest())


def _data_uri(url: str, policy: FetchPolicy) -> Fetched:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise _refused("a data: URI without a comma")
    # The encoded size bounds the decoded one: refuse before decoding.
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise _refused(f"a data: URI over {policy.max_bytes} bytes")
    parts = header.split(";")
    is_base64 = parts[-1].lower() == "base64"
    media = [p for p in (parts[:-1] if is_base64 else parts) if p]
    content_type = media[0] if media and "/" in media[0] else "text/plain"
    try:
        data = (
            base64.b64decode(payload, validate=False)
            if is_base64
            else urllib.parse.unquote_to_bytes(payload)
        )
    except (binascii.Error, ValueError) as exc:
        raise _refused(f"a data: URI that does not decode: {exc}") from None
    if len(data) > policy.max_bytes:
        raise _refused(f"a data: URI over {policy.max_bytes} bytes")
    return _fetched(data, content_type)


def _pinned(url: httpx.URL, policy: FetchPolicy) -> tuple[httpx.URL, str]:
    """The URL rewritten to a checked address, and the host name it came from."""
    if url.scheme not in ("http", "https"):
        raise _refused(f"only http(s) and data: URLs are fetched, not {url.scheme}:")
    if url.userinfo:
        raise _refused("a URL with a user name or password in it is not fetched")
    host = url.host
    if not host:
        raise _refused("a URL without a host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = list(policy.resolve(host, port))
        except OSError as exc:
            raise OutputError(f"cannot resolve {host!r}: {exc}") from None
    if not addresses:
        raise OutputError(f"{host!r} resolves to no address")
    refused = [a for a in addresses if not policy.allows(a)]
    if refused:
        raise _refused(
            f"{host!r} resolves to {', '.join(refused)}, which is not public "
            "(allow it with FetchPolicy(allow_networks=...))"
        )
    return url.copy_with(host=addresses[0]), host


def _get(client: httpx.Client, url: httpx.URL, policy: FetchPolicy, ends: float) -> Fetched:
    """Follow redirects by hand, each hop re-checked; read at most ``max_bytes``."""
    for _ in range(policy.max_redirects + 1):
        pinned, host = _pinned(url, policy)
        default_port = url.port is None
        host_header = host if default_port else f"{host}:{url.port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if default_port else f"[{host}]:{url.port}"
        request = httpx.Request(
            "GET",
            pinned,
            headers={"host": host_header, "user-agent": policy.user_agent, "accept": "*/*"},
            extensions={
                "sni_hostname": host,
                "timeout": httpx.Timeout(policy.timeout).as_dict(),
            },
        )
        client.cookies.clear()  # nothing a file host set travels to the next one
        response = client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                url = url.join(response.headers["location"])
                continue
            if response.status_code != 200:
                message = f"GET {url} answered {response.status_code}"
                raise OutputError(message, permanent=response.status_code in _GONE)
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                raise _refused(f"{url} is {length} bytes: over {policy.max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise _refused(f"{url} is over {policy.max_bytes} bytes")
                if time.monotonic() > ends:
                    raise OutputError(f"{url} took longer than {policy.deadline} s")
                chunks.append(chunk)
            content_type = response.headers.get("content-type", "application/octet-stream")
            return _fetched(b"".join(chunks), content_type.split(";")[0].strip())
        finally:
            response.close()
    raise _refused(f"more than {policy.max_redirects} redirects")


_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
]


def inline_base64(value: str, policy: FetchPolicy) -> Fetched:
    """A bare base64 value (OpenAI's ``image_generation_call`` result) as a file, its
    content type read from its first bytes. Raises a permanent `OutputError` when it
    is not base64 or is over ``max_bytes``."""
    if len(value) > policy.max_bytes * 4 // 3 + 4:
        raise _refused(f"an inline file over {policy.max_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _refused("a value chosen as a file is neither a URL nor base64") from None
    if len(data) > policy.max_bytes:
        raise _refused(f"an inline file over {policy.max_bytes} bytes")
    kind = next((t for sig, t in _SIGNATURES if data.startswith(sig)), None)
    return _fetched(data, kind or "application/octet-stream")


def fetch(url: str, policy: FetchPolicy, client: httpx.Client) -> Fetched:
    """Fetch ``url`` (http, https or data:) under ``policy`` with ``client`` (which must
    not follow redirects or hold cookies: the keeper's own).

    Raises `OutputError`: ``permanent`` for what no retry will change (a refused
    scheme, address or size, a 404), not for network errors, timeouts and 5xx.
    """
    if not isinstance(url, str):
        raise _refused(f"an output file must be a URL string, not {type(url).__name__}")
    if url[:5].lower() == "data:":
        return _data_uri(url, policy)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise _refused(f"not a URL: {exc}") from None
    ends = time.monotonic() + policy.deadline
    try:
        return _get(client, parsed, policy, ends)
    except httpx.HTTPError as exc:
        raise OutputError(f"GET {parsed} failed: {type(exc).__name__}: {exc}") from None
