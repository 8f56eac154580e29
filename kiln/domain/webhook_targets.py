"""Where webhooks may send: `https` (or `http` when the server allows it) to addresses
on the public internet, unless the server allows private ones (`--webhooks-allow-private`).

Checked when a webhook is saved and again before every delivery, since a name can
come to resolve elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

RESOLVE_TIMEOUT = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """str(exc) says why, for the client."""


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def check(url: str, *, allow_private: bool, allow_http: bool) -> None:
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
    if allow_private:
        return
    for address in await resolve(host, port):
        if not _public(address):
            raise TargetRefused(
                f"payload_url's host resolves to {address}, which is not a public address."
            )


async def resolve(host: str, port: int | None) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        raise TargetRefused(f"payload_url's host {host} does not resolve.") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
