"""Fetch images for upstreams that need them inline, without becoming an SSRF proxy.

Only http(s). Every address a host name resolves to must be public (not loopback, private,
link-local, multicast, reserved or a cloud metadata address) unless an operator allowed its
network; the connection then goes to that checked address (no second DNS lookup to rebind),
with the original name kept for Host and TLS. Redirects are followed by hand and checked the
same way. Size, time and content type are limited.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from llmrelay.errors import InvalidRequest

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
_MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, allow: list[str], max_bytes: int, timeout: float) -> FetchPolicy:
        return cls(tuple(ipaddress.ip_network(a, strict=False) for a in allow), max_bytes, timeout)


def _refused(param: str, url: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"The image at {url[:200]!r} cannot be fetched: {why}.",
        param=param,
        code="image_fetch_refused",
    )


def _public(address: IPAddress, policy: FetchPolicy) -> bool:
    if any(address in network for network in policy.allow):
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address in _METADATA
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def _checked_address(url: str, param: str, policy: FetchPolicy) -> tuple[str, IPAddress]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused(param, url, "only http and https URLs are fetched")
    if parts.username or parts.password:
        raise _refused(param, url, "URLs with credentials are not fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await _resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        raise _refused(param, url, f"the host {parts.hostname!r} does not resolve") from None
    for address in addresses:
        if not _public(address, policy):
            raise _refused(param, url, f"it resolves to {address}, a non-public address")
    return parts.hostname, addresses[0]


class MediaFetcher:
    """Fetches media under a :class:`FetchPolicy` with its own HTTP client."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._client: httpx.AsyncClient | None = None

    async def data_uri(self, url: str, *, param: str, media: str) -> str:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return await fetch_data_uri(self._client, url, param=param, media=media, policy=self.policy)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def fetch_data_uri(
    client: httpx.AsyncClient, url: str, *, param: str, media: str, policy: FetchPolicy
) -> str:
    """The resource at ``url`` as a ``data:`` URI, or a 400 saying why not."""
    try:
        async with asyncio.timeout(policy.timeout):
            return await _fetch(client, url, param=param, media=media, policy=policy)
    except TimeoutError:
        raise _refused(param, url, f"it did not arrive within {policy.timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise _refused(param, url, f"the download failed ({type(exc).__name__})") from None


async def _fetch(
    client: httpx.AsyncClient, url: str, *, param: str, media: str, policy: FetchPolicy
) -> str:
    for _ in range(_MAX_REDIRECTS + 1):
        host, address = await _checked_address(url, param, policy)
        parts = urlsplit(url)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if parts.port:
            netloc += f":{parts.port}"
        target = parts._replace(netloc=netloc).geturl()
        request = client.build_request(
            "GET", target, headers={"Host": parts.netloc}, extensions={"sni_hostname": host}
        )
        response = await client.send(request, stream=True)
        try:
            if response.is_redirect:
                location = response.headers.get("location", "")
                url = urljoin(url, location)
                continue
            if response.status_code != 200:
                raise _refused(param, url, f"the server answered {response.status_code}")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not kind.startswith(f"{media}/"):
                raise _refused(
                    param, url, f"its content type is {kind or 'missing'!r}, not {media}/*"
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise _refused(param, url, f"it is larger than {policy.max_bytes} bytes")
            data = bytearray()
            async for part in response.aiter_bytes():
                data += part
                if len(data) > policy.max_bytes:
                    raise _refused(param, url, f"it is larger than {policy.max_bytes} bytes")
            return f"data:{kind};base64,{base64.b64encode(bytes(data)).decode()}"
        finally:
            await response.aclose()
    raise _refused(param, url, f"it redirects more than {_MAX_REDIRECTS} times")
