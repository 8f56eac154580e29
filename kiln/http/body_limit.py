"""Request bodies over the limit get 413 before they are read whole."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.core import spec
from kiln.core.problems import Problem
from kiln.http.asgi import header


def too_large(limit: int) -> Problem:
    return Problem("payload_too_large", f"The request body is over {limit} bytes.")


class BodyLimitMiddleware:
    """Caps JSON bodies at `limit`. Operations the spec marks `x-kiln-streamed-body`
    stream their bodies to storage and enforce their own, larger limits."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.streamed = {op_id for op_id, op in spec.operations().items() if op.streamed_body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routing = scope.get("extensions", {}).get("connexion_routing", {})
        if routing.get("operation_id") in self.streamed:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, counting_receive, send)
