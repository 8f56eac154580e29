"""What a build may fetch from and connect to: its `sources` and the ssh driver's host.

Both are chosen by whoever submits the build, and both are reached from the worker's
machine, so both are checked as if an attacker chose them:
- sources are cloned only over https, http, ssh and git, never with one of git's
  transport helpers (`ext::sh -c ...` runs a command); local paths and file:// read the
  worker's disk and are refused unless the server allows them (`--sources-allow-local`);
- a host that is, or resolves to, a loopback, private or link-local address (the
  database, a cloud's metadata service) is refused unless the server allows it
  (`--builds-allow-private`), with the rules webhooks follow (kiln.domain.webhook_targets).

What a submission can be told at once (a scheme, a local path, a literal address) is
checked then (`refusal`); names are resolved by the worker just before the build
runs (`resolve_*`), and the ssh driver connects to the address approved then.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kiln.domain import webhook_targets
from kiln.domain.webhook_targets import IPAddress, TargetRefused

REMOTE_SCHEMES = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
ALLOWED_PROTOCOLS = "https:http:ssh:git"  # GIT_ALLOW_PROTOCOL for every clone
# `user@host:path`, git's scp-like syntax for ssh (no slash before the first colon).
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(\[[^\]/]+\]|[^@/:\[\]]+):(?!//).*")
# `<transport>::<address>`: git hands the address to `git-remote-<transport>`.
_TRANSPORT_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")


@dataclass(frozen=True)
class Remote:
    host: str
    port: int


def source_remote(url: str) -> Remote | None:
    """The host a source is fetched from, or None for a local path or file:// URL.
    Raises TargetRefused for what is never cloned."""
    if url.startswith("-"):
        raise TargetRefused(f"{url} is not a URL or path git can clone.")
    if _TRANSPORT_HELPER.match(url):
        raise TargetRefused(f"{url} names a git transport helper; use https, ssh or git URLs.")
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            return None
        if scheme not in REMOTE_SCHEMES:
            raise TargetRefused(f"Sources cannot be cloned over {scheme}://.")
        try:
            port = parts.port or REMOTE_SCHEMES[scheme]
        except ValueError:
            raise TargetRefused(f"{url} has an invalid port.") from None
        if not parts.hostname:
            raise TargetRefused(f"{url} has no host.")
        return Remote(parts.hostname, port)
    match = _SCP_LIKE.fullmatch(url)
    if match is None:
        return None
    return Remote(match.group(1).strip("[]").lower(), 22)


def source_refusal(url: str, *, allow_local: bool, allow_private: bool) -> str | None:
    """Why the source `url` cannot be used, as far as can be told without DNS; None if
    it may."""
    try:
        remote = source_remote(url)
    except TargetRefused as refused:
        return str(refused)
    if remote is None:
        if allow_local:
            return None
        return f"{url} is on the server's own disk; this server clones only remote sources."
    return _literal_refusal(remote.host, allow_private, url)


def ssh_address(address: str) -> Remote:
    """`host[:port]` (an IPv6 address in brackets) as host and port."""
    host, _, port = address.rpartition(":") if not address.endswith("]") else (address, "", "")
    if not host or "]" in port:
        host, port = address, ""
    return Remote(host.strip("[]").lower(), int(port) if port else 22)


def ssh_refusal(address: str, *, allow_private: bool) -> str | None:
    remote = ssh_address(address)
    if not 0 < remote.port < 65536:
        return f"{address} has an invalid port."
    return _literal_refusal(remote.host, allow_private, address)


def _literal_refusal(host: str, allow_private: bool, what: str) -> str | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if allow_private or webhook_targets.is_public(address):
        return None
    return f"{what} is at {address}, which is not a public address."


async def resolve_remote(remote: Remote, *, allow_private: bool, what: str) -> IPAddress:
    """The address to reach `remote` at; raises TargetRefused if it does not resolve or
    resolves to an address builds may not reach."""
    addresses = await webhook_targets.resolve(remote.host, remote.port, what)
    if not allow_private:
        for address in addresses:
            if not webhook_targets.is_public(address):
                raise TargetRefused(
                    f"{what}'s host {remote.host} resolves to {address}, which is not a public"
                    " address."
                )
    return addresses[0]


def git_protocols(*, allow_local: bool) -> str:
    return ALLOWED_PROTOCOLS + (":file" if allow_local else "")
