"""Strong ETags computed from the exact bytes of a representation."""

from __future__ import annotations

import hashlib

from kiln.core.problems import Problem


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def none_match(header: str | None, etag: str) -> bool:
    """True when `If-None-Match` matches, so a GET may answer 304 (weak comparison)."""
    if not header:
        return False
    tags = _tags(header)
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def require_match(header: str | None, etag: str) -> None:
    """412 unless `If-Match` is absent, `*`, or lists `etag` (strong comparison)."""
    if header is None:
        return
    tags = _tags(header)
    if "*" not in tags and etag not in tags:
        raise Problem("precondition_failed", "The resource has changed; fetch it again.")
