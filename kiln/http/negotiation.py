"""Content negotiation: which media type to answer with, or 406 when none will do."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.core import spec
from kiln.core.problems import Problem
from kiln.http.asgi import header

HAL_JSON = "application/hal+json"
JSON = "application/json"


def parse_accept(value: str) -> list[tuple[str, float]]:
    """Media ranges with their q-values, in the order the client gave them."""
    ranges = []
    for part in value.split(","):
        media, _, params = part.strip().partition(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, raw = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(raw)
                except ValueError:
                    q = 0.0
        ranges.append((media, q))
    return ranges


def _matches(media_range: str, media: str) -> bool:
    if media_range in ("*/*", media) or media == "*/*":  # "*/*" offered: any type there is
        return True
    kind, _, sub = media_range.partition("/")
    return sub == "*" and media.startswith(kind + "/")


def choose(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the client prefers most (ties go to the server's order)."""
    if not offered:
        return None
    if not accept:
        return offered[0]
    ranges = parse_accept(accept)
    best, best_q = None, 0.0
    for media in offered:
        # The most specific range that matches decides this media type's quality.
        q = max(
            ((len(r), q) for r, q in ranges if _matches(r, media)),
            default=(0, 0.0),
        )[1]
        if q > best_q:
            best, best_q = media, q
    return best


def is_json(media: str) -> bool:
    return media == JSON or media.endswith("+json")


def asks_only_for_json(accept: str) -> bool:
    """Whether every media range the client accepts is a JSON type (problems included):
    what generated clients send for every call, downloads too."""
    wanted = [media for media, q in parse_accept(accept) if q > 0]
    return bool(wanted) and all(is_json(media) for media in wanted)


def produces_bytes(produces: Sequence[str]) -> bool:
    """Whether an operation answers with text or bytes rather than JSON (job output,
    downloads)."""
    return any(not is_json(media.partition(";")[0].strip()) for media in produces)


class AcceptMiddleware:
    """Answers 406 before any work when the operation produces nothing acceptable.

    An operation that produces text or bytes still answers a client whose `Accept` lists
    only JSON or problem types with its text or bytes (RFC 9110 lets a server disregard
    `Accept`): generated clients send such an `Accept` on every call."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.operations = spec.operations()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = header(scope, b"accept") if scope["type"] == "http" else None
        if accept:
            routing = scope.get("extensions", {}).get("connexion_routing", {})
            op = self.operations.get(routing.get("operation_id") or "")
            wanted = accept.decode("latin-1")
            if (
                op is not None
                and op.produces
                and choose(wanted, op.produces) is None
                and not (produces_bytes(op.produces) and asks_only_for_json(wanted))
            ):
                raise Problem(
                    "not_acceptable", f"This operation produces {', '.join(op.produces)}."
                )
        await self.app(scope, receive, send)
