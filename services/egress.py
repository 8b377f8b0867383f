"""Which addresses outbound HTTP may reach (webhook targets, input images fetched by URL): no loopback,
private, link-local (cloud metadata) or other special addresses unless config allows their network.
Checked at submit time (with DNS) and again when connecting, on the very addresses connected to, so
DNS rebinding cannot slip past."""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedTarget(OSError):
    """The target is not an address webhooks may reach."""


def networks(config_networks: list[str]) -> list[Network]:
    return [ipaddress.ip_network(n, strict=False) for n in config_networks]


def check_address(address: str, allowed: list[Network]) -> None:
    ip: Address = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return
    if not ip.is_global or ip.is_multicast:
        raise BlockedTarget(f"{address} is a private, loopback, link-local or reserved address")


def split(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedTarget("must be an http(s) URL")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def literal_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


async def check_url(url: str, allowed: list[Network]) -> None:
    """At submit time: the URL's host, resolved, may be called."""
    host, port = split(url)
    if literal_ip(host):
        check_address(host, allowed)
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise BlockedTarget(f"host {host} does not resolve ({e.strerror or e})") from None
    for *_, sockaddr in infos:
        check_address(sockaddr[0], allowed)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses forbidden addresses: the addresses checked are the ones used."""

    def __init__(self, allowed: list[Network]):
        self.allowed = allowed
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        results = await self.inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], self.allowed)
        return results

    async def close(self) -> None:
        await self.inner.close()
