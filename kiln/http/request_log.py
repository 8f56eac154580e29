"""Outermost layer: a request id on every response and one structured log line per request."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.core.problems import Problem
from kiln.http.asgi import (
    SCOPE_KEY,
    RequestInfo,
    bind,
    header,
    new_request_id,
    send_problem,
    unbind,
)

log = logging.getLogger("kiln.access")
log_errors = logging.getLogger("kiln.errors")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = given.decode() if given and _SANE_ID.match(given) else new_request_id()
        info = scope[SCOPE_KEY] = RequestInfo(request_id)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        bound = bind(scope)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Only the layers outside connexion's own error handling can get here.
            log_errors.exception("unhandled error in request %s", request_id)
            if not started:
                await send_problem(scope, send_with_id, Problem("internal_error"))
        finally:
            unbind(bound)
            _log_line(scope, info, status)


def _log_line(scope: Scope, info: RequestInfo, status: int) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    entry: dict[str, Any] = {
        "event": "request",
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round((time.perf_counter() - info.started) * 1000, 2),
        "request_id": info.request_id,
        "user_id": info.user_id,
    }
    log.info(orjson.dumps(entry).decode())
