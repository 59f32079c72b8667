"""Source images by URL or base64, fetched so that no request can reach an internal address.

Each hop (the URL and every redirect) is checked before a connection is made: http(s) only, no
credentials in the URL, and every address the host resolves to must be public, unless it lies
in an allowlisted network. The connection then goes to the address that was checked (the host
name travels in the Host header and TLS SNI), so a second DNS answer cannot swap it for another.
Bodies are capped while they stream, and only image content types are read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_consumer.errors import InvalidRequest, TransientFailure
from llm_consumer.lazy import lazy_module

if TYPE_CHECKING:
    import httpx2
else:  # loaded by the first source image fetched (about 3 MB of RSS a worker otherwise)
    httpx2 = lazy_module("httpx2")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ACCEPTED_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    allowlist: tuple[IPNetwork, ...] = ()


def address_refusal(address: IPAddress, allowlist: Sequence[IPNetwork]) -> str | None:
    """Why `address` may not be fetched from, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host a.b.c.d
    if any(address.version == net.version and address in net for net in allowlist):
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local (cloud metadata) address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a non-public address"
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        return address_refusal(address.sixtofour, allowlist)  # 2002:a.b.c.d::/48 tunnels to it
    return None


class SourceFetcher:
    """Fetches source images under a FetchPolicy; owns one HTTP client, made by the first
    fetch (a worker serving text never makes it)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._client: httpx2.AsyncClient | None = None

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            policy = self.policy
            self._client = httpx2.AsyncClient(
                trust_env=False, follow_redirects=False,
                timeout=httpx2.Timeout(policy.timeout_s, connect=min(5.0, policy.timeout_s)),
                headers={"User-Agent": "llm-consumer image fetcher",
                         "Accept-Encoding": "identity",
                         "Accept": ", ".join(sorted(ACCEPTED_TYPES))})
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def decode_base64(self, data: str) -> bytes:
        """A `source_image.data` value (bare base64 or a data: URL) under the same size cap."""
        payload = data.split(",", 1)[1] if data.startswith("data:") else data
        payload = "".join(payload.split())
        if len(payload) * 3 // 4 > self.policy.max_bytes:
            raise InvalidRequest(f"source_image.data is larger than {self.policy.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("source_image.data is not valid base64") from None

    async def fetch(self, url: str) -> bytes:
        """The body of an image URL, following at most MAX_REDIRECTS checked redirects."""
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                for _ in range(MAX_REDIRECTS + 1):
                    target = await self._checked(url)
                    body, location = await self._get(url, target)
                    if location is None:
                        return body
                    url = location
        except TimeoutError:
            raise TransientFailure(f"source image took longer than {self.policy.timeout_s:g}s",
                                   code="timeout") from None
        raise InvalidRequest(f"source image URL redirects more than {MAX_REDIRECTS} times")

    async def _checked(self, url: str) -> httpx2.URL:
        """The URL to connect to: `url` with its host replaced by a checked address."""
        try:
            parsed = httpx2.URL(url)
        except httpx2.InvalidURL:
            raise InvalidRequest("source image URL is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise InvalidRequest(f"source image URL scheme {parsed.scheme or 'none'!r} is "
                                 "not allowed (http and https only)")
        if not parsed.host:
            raise InvalidRequest("source image URL has no host")
        if parsed.userinfo:
            raise InvalidRequest("source image URL may not carry credentials")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self._resolve(parsed.host, port)
        for address in addresses:
            reason = address_refusal(address, self.policy.allowlist)
            if reason is not None:
                raise InvalidRequest(f"source image URL host {parsed.host} resolves to {reason}; "
                                     "refused")
        return parsed.copy_with(host=str(addresses[0]), port=port)

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise InvalidRequest(f"source image URL host {host} does not resolve") from None
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]

    async def _get(self, url: str, target: httpx2.URL) -> tuple[bytes, str | None]:
        original = httpx2.URL(url)
        host_header = original.netloc.decode("ascii")
        extensions = ({"sni_hostname": original.raw_host.decode("ascii")}
                      if original.scheme == "https" else {})
        request = self.client.build_request("GET", target, headers={"Host": host_header},
                                             extensions=extensions)
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException:
            raise TransientFailure("source image host timed out", code="timeout") from None
        except httpx2.HTTPError as err:
            raise TransientFailure(f"source image host unreachable: {err}") from None
        try:
            return await self._read(original, response)
        finally:
            await response.aclose()

    async def _read(self, url: httpx2.URL, response: httpx2.Response) -> tuple[bytes, str | None]:
        if response.is_redirect and "location" in response.headers:
            return b"", str(url.join(response.headers["location"]))
        if response.status_code >= 500:
            raise TransientFailure(f"source image host answered {response.status_code}")
        if response.status_code != 200:
            raise InvalidRequest(f"source image URL answered {response.status_code}")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ACCEPTED_TYPES:
            raise InvalidRequest(f"source image URL has content type {kind or 'none'!r}; "
                                 f"expected one of {', '.join(sorted(ACCEPTED_TYPES))}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise InvalidRequest(f"source image is larger than {self.policy.max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > self.policy.max_bytes:
                raise InvalidRequest(f"source image is larger than {self.policy.max_bytes} bytes")
        return bytes(body), None
