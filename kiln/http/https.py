"""HTTPS only: plain HTTP is refused, and every answer tells browsers to stay on
HTTPS and to take each body as the type it is labelled with."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.core.problems import Problem
from kiln.http.asgi import send_problem

SECURITY_HEADERS = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
)


class HttpsOnlyMiddleware:
    """`scope["scheme"]` is what uvicorn saw, or what a trusted proxy said it saw
    (`X-Forwarded-Proto`, honoured only from `--forwarded-allow-ips`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("scheme") != "https":
            await send_problem(
                scope, send, Problem("https_required", "Use https:// for every request.")
            )
            return

        async def send_with_security_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_security_headers)
