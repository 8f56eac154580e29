"""Where webhooks may send: `https` (or `http` when the server allows it) to addresses
on the public internet, unless the server allows private ones (`--webhooks-allow-private`).

Checked when a webhook is saved and again before every delivery, since a name can
come to resolve elsewhere. The delivery then connects to an address this check
approved (`Target.addresses`), never to whatever the name resolves to a moment later.

An IPv6 address that carries an IPv4 address (IPv4-mapped or -compatible, NAT64,
6to4, Teredo) reaches that IPv4 address, so it is judged by it. A host is an IP
address or a name in ASCII: other spellings (fullwidth digits, ideographic full
stops) are read as addresses by some parsers and as names by others.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

RESOLVE_TIMEOUT = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
# urlsplit lower-cases the host; internationalized names come in their xn-- form.
_ASCII_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


class TargetRefused(Exception):
    """str(exc) says why, for the client."""


@dataclass(frozen=True)
class Target:
    """A payload URL that passed the check, and the addresses it may be reached at."""

    url: str
    host: str
    addresses: tuple[IPAddress, ...]


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a packet to `address` ends up at, if it is one of the forms
    that carry one; none otherwise."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return (ipaddress.IPv4Address(address.packed[12:]),)
    if address in _LOCAL_NAT64:
        # RFC 6052 for a /48 prefix: 16 bits of the IPv4 address, the zero octet `u`,
        # then the other 16.
        return (ipaddress.IPv4Address(address.packed[6:8] + address.packed[9:11]),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # the server's and the client's
    return ()


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not address.is_multicast
    carried = embedded_ipv4(address)
    if carried:
        return all(is_public(a) for a in carried)
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_site_local
        and not address.is_reserved
    )


async def check(url: str, *, allow_private: bool, allow_http: bool) -> Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("payload_url is not a valid URL.") from None
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_http):
        raise TargetRefused(
            "payload_url must use https." if not allow_http else "payload_url must use http(s)."
        )
    host = parts.hostname
    if not host:
        raise TargetRefused("payload_url has no host.")
    addresses = await resolve(host, port or (443 if parts.scheme == "https" else 80))
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise TargetRefused(
                    f"payload_url's host resolves to {address}, which is not a public address."
                )
    return Target(url, host, tuple(addresses))


async def resolve(host: str, port: int, what: str = "payload_url") -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if not _ASCII_NAME.fullmatch(host):
        raise TargetRefused(
            f"{what}'s host must be an IP address or a name in ASCII letters, digits,"
            " '-' and '.' (an internationalized name in its xn-- form)."
        )
    try:
        found = await asyncio.wait_for(lookup(host, port), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        found = []
    if not found:
        raise TargetRefused(f"{what}'s host {host} does not resolve.")
    return found


async def lookup(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` has, in the order to try them (tests put their own here)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses
