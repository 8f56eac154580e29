"""Per-request state shared by Kiln's layers, and helpers for raw ASGI middlewares."""

from __future__ import annotations

import base64
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import Scope, Send

from kiln.core.principal import Principal
from kiln.core.problems import Problem, render

_BASE32_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_request_id() -> str:
    """26 characters: 48 bits of milliseconds then 82 random bits, so ids sort by time.

    Ids only need to be unique, not unguessable, so the fast generator is enough."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + random.randbytes(10)  # noqa: S311
    return base64.b32encode(raw).translate(_BASE32_TO_CROCKFORD)[:26].decode()


@dataclass
class RequestInfo:
    """What the layers learn about one request; shared by every copy of its scope."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None

    @property
    def user_id(self) -> int | None:
        return self.principal.user_id if self.principal is not None else None


SCOPE_KEY = "kiln.request"
_current: ContextVar[Scope] = ContextVar("kiln_scope")


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    if info is None:  # a request that did not pass the outer middleware
        info = scope[SCOPE_KEY] = RequestInfo(new_request_id())
    return info


def bind(scope: Scope) -> object:
    """Make `scope` the current request's for the code that serves it."""
    return _current.set(scope)


def unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def current_scope() -> Scope:
    """The ASGI scope of the request being served."""
    return _current.get()


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
