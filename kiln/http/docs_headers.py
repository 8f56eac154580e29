"""Headers for the interactive reference under `/docs`: no other site may frame it
(clickjacking a page that holds the caller's credentials), and its pages run only the
scripts Kiln serves with them.

Swagger UI's page starts itself with an inline script, so the policy names that
script by its hash: an HTML page is held until its end, its inline scripts hashed,
and only then sent. Styles stay `'unsafe-inline'` (the page has a `<style>`, and
Swagger UI sets styles as it renders), images may be `data:` (its icons are, in its
CSS), and everything else comes from Kiln itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.types import Message, Scope, Send

PREFIX = "/docs"
_INLINE_SCRIPT = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)
_SOURCED = re.compile(rb"\bsrc\s*=", re.IGNORECASE)


def inline_scripts(html: bytes) -> list[bytes]:
    """The text of each `<script>` in the page that has no `src`."""
    return [
        body for attributes, body in _INLINE_SCRIPT.findall(html) if not _SOURCED.search(attributes)
    ]


def policy(scripts: Iterable[bytes] = ()) -> str:
    """The Content-Security-Policy for a page whose inline scripts are `scripts`."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts
    )
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self'{hashes}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def guarded(scope: Scope, send: Send) -> Send:
    """`send`, adding the headers to what is sent under `/docs`."""
    if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
        return send
    start: Message | None = None
    body: list[bytes] = []

    async def send_guarded(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if _is_html(message):
                start = message  # sent once the whole page is here
                return
            await send(_with_headers(message, policy()))
        elif message["type"] == "http.response.body" and start is not None:
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = b"".join(body)
            await send(_with_headers(start, policy(inline_scripts(page))))
            await send({"type": "http.response.body", "body": page})
        else:
            await send(message)

    return send_guarded


def _is_html(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.lower().startswith(b"text/html")
        for name, value in start.get("headers", [])
    )


def _with_headers(start: Message, content_security_policy: str) -> Message:
    headers = [*start.get("headers", [])]
    headers += [
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", content_security_policy.encode("latin-1")),
    ]
    return {**start, "headers": headers}
