"""Small helpers for the raw ASGI middlewares that answer before connexion does."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from starlette.types import Scope, Send

from kiln.problems import Problem, render

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_request_id() -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass
class RequestInfo:
    """What the middlewares learn about one request, shared through the scope."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    user_id: int | None = None


SCOPE_KEY = "kiln.request"


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    if info is None:  # a request that did not pass the outer middleware
        info = scope[SCOPE_KEY] = RequestInfo(new_request_id())
    return info


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header; `name` in lower case."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def send_problem(scope: Scope, send: Send, problem: Problem) -> None:
    status, headers, body = render(
        problem, request_id=request_info(scope).request_id, instance=scope.get("path", "")
    )
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
