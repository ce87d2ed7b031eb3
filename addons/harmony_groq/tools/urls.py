"""URL safety for every fetch a model or a client asks for: no private, loopback or link-local
address (after DNS, on every redirect), unless ``ALLOW_PRIVATE_URLS`` lists it; size and time
limits on every fetch.

The address a name resolves to is checked and then *used*: the request goes to that address
(the ``Host`` header and TLS's server name keep the name), so a DNS answer that changes between
the check and the connection (rebinding) cannot move the fetch elsewhere. Redirects are
followed here, one checked hop at a time. Configured backends (``SEARXNG_URL``) are trusted and
do not come through here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class UnsafeUrl(Exception):
    """A URL the policy refuses (``code``: ``blocked_url``, ``invalid_url``), or a fetch past
    a limit (``too_large``, ``timeout``, ``unavailable``). The message is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _is_public(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts a fetch may reach, and its limits."""

    allow_hosts: frozenset[str] = frozenset()  # names or literal addresses, lowercased
    allow_networks: tuple[Network, ...] = ()
    max_bytes: int = 5 * 1024 * 1024
    timeout: float = 15.0
    max_redirects: int = 5
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def parse(cls, allow: str, **limits: object) -> UrlPolicy:
        """``ALLOW_PRIVATE_URLS``: comma-separated host names, addresses or CIDRs. Raises
        ``ValueError`` naming a bad entry."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in (part.strip().lower() for part in allow.split(",")):
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"ALLOW_PRIVATE_URLS entry {entry!r} is not a CIDR") from None
            else:
                hosts.add(entry.strip("[]"))
        return cls(frozenset(hosts), tuple(networks), **limits)  # type: ignore[arg-type]

    def allows(self, host: str, address: Address) -> bool:
        return (_is_public(address) or host in self.allow_hosts
                or str(address) in self.allow_hosts
                or any(address in network for network in self.allow_networks))

    async def check(self, url: str) -> tuple[str, Address]:
        """The URL's host and the address to connect to; ``UnsafeUrl`` when none is allowed.
        Every address a name has must be allowed (one private answer among public ones is a
        rebinding attempt)."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise UnsafeUrl("invalid_url", f"Only http(s) URLs with a host can be opened: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UnsafeUrl("invalid_url", f"The URL's port is invalid: {url!r}") from None
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = await self.resolver(host, port)
            except OSError as exc:
                raise UnsafeUrl("unavailable", f"{host} could not be resolved ({exc})") from None
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        if not addresses:
            raise UnsafeUrl("unavailable", f"{host} has no address")
        refused = [a for a in addresses if not self.allows(host, a)]
        if refused:
            raise UnsafeUrl("blocked_url", f"{host} resolves to a private, loopback or "
                            f"link-local address ({refused[0]}); the proxy does not fetch it "
                            "(ALLOW_PRIVATE_URLS lists the exceptions).")
        return host, addresses[0]


@dataclass
class Fetched:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    elapsed_ms: float


def _pinned(url: str, address: Address) -> str:
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


async def fetch(client: httpx.AsyncClient, url: str, policy: UrlPolicy,
                headers: dict[str, str] | None = None) -> Fetched:
    """GET ``url`` under ``policy``: each hop checked and pinned, the body cut at
    ``max_bytes`` (``too_large``), the whole fetch within ``timeout``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(policy.timeout):
            for _ in range(policy.max_redirects + 1):
                host, address = await policy.check(url)
                netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
                request = client.build_request(
                    "GET", _pinned(url, address), headers={**(headers or {}), "host": netloc},
                    extensions={"sni_hostname": host})
                response = await client.send(request, stream=True, follow_redirects=False)
                try:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    body = await _read_limited(response, policy.max_bytes)
                finally:
                    await response.aclose()
                return Fetched(url, response.status_code,
                               response.headers.get("content-type", ""), body,
                               (time.monotonic() - started) * 1000)
    except TimeoutError:
        raise UnsafeUrl("timeout", f"Fetching {url} took longer than {policy.timeout:g} s") \
            from None
    except httpx.HTTPError as exc:
        raise UnsafeUrl("unavailable", f"Fetching {url} failed ({type(exc).__name__})") \
            from None
    raise UnsafeUrl("unavailable", f"More than {policy.max_redirects} redirects from {url}")


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UnsafeUrl("too_large", f"The page is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise UnsafeUrl("too_large", f"The page is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
